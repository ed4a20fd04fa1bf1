/* The machine's limit for the host agent's benchmark (bench/agent.py): UDP loops in C on loopback.
 *
 *   udp_loops reflect             bind 127.0.0.1 on a free port, print "ready 127.0.0.1:PORT", then send every
 *                                 datagram back to its sender (recvmmsg/sendmmsg). An aggregation UPDATE goes back
 *                                 as a RESULT (msg_type bit set): for a job of one worker that is exactly the
 *                                 switch's answer (the sum of one contribution, its exponent, its key and op). It
 *                                 answers as the software switch's UDP mode does: a received batch's consecutive
 *                                 replies to one sender, of one size, go out as one UDP GSO message.
 *   udp_loops loop HOST:PORT N SIZE WINDOW
 *                                 send N datagrams of SIZE bytes with WINDOW in flight, receiving every reply,
 *                                 with sendmmsg/recvmmsg; print "PACKETS SECONDS".
 *
 * Compiled by bench/agent.py with gcc into a temporary folder at bench time; never committed as a binary.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/udp.h> /* SOL_UDP, UDP_SEGMENT, UDP_GRO */
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DGRAM 2048
#define AGG_VERSION_UPDATE 0x80 /* version 2, msg_type UPDATE in the top four bits of header byte 0 */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int reflect(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
        perror("bind");
        return 1;
    }
    printf("ready 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    static unsigned char data[BATCH][MAX_DGRAM];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_in peers[BATCH];
    for (;;) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < BATCH; i++) {
            iovs[i] = (struct iovec){data[i], MAX_DGRAM};
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                              .msg_iov = &iovs[i], .msg_iovlen = 1};
        }
        int got = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            perror("recvmmsg");
            return 1;
        }
        for (int i = 0; i < got; i++) {
            iovs[i].iov_len = msgs[i].msg_len;
            if (msgs[i].msg_len > 0 && (data[i][0] & 0xF0) == AGG_VERSION_UPDATE)
                data[i][0] |= 0x10; /* UPDATE -> RESULT */
        }
        /* As the software switch's UDP mode answers: consecutive replies to one peer of one size go as one UDP GSO
         * message (the receiver's GRO takes them as one run; recvmmsg still gets them datagram by datagram). */
        struct mmsghdr out[BATCH];
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } control[BATCH];
        int messages = 0;
        for (int i = 0; i < got;) {
            int j = i + 1;
            /* a GSO message carries at most 65,507 bytes of UDP payload */
            const int most = msgs[i].msg_len ? (int)(65507 / msgs[i].msg_len) : 1;
            while (j < got && j - i < most && msgs[j].msg_len == msgs[i].msg_len &&
                   peers[j].sin_port == peers[i].sin_port && peers[j].sin_addr.s_addr == peers[i].sin_addr.s_addr)
                j++;
            struct msghdr *h = &out[messages].msg_hdr;
            *h = (struct msghdr){.msg_name = &peers[i], .msg_namelen = sizeof peers[i], .msg_iov = &iovs[i],
                                 .msg_iovlen = (size_t)(j - i)};
            if (j - i > 1) {
                h->msg_control = control[messages].buf;
                h->msg_controllen = sizeof control[messages].buf;
                struct cmsghdr *c = CMSG_FIRSTHDR(h);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size = (uint16_t)msgs[i].msg_len;
                memcpy(CMSG_DATA(c), &size, sizeof size);
            }
            messages++;
            i = j;
        }
        for (int sent = 0; sent < messages;) {
            int n = sendmmsg(fd, out + sent, (unsigned)(messages - sent), 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                break; /* a reply lost: the sender's timer covers it */
            }
            sent += n;
        }
    }
}

static int loop(const char *dest, long count, int size, int window)
{
    char host[64];
    const char *colon = strrchr(dest, ':');
    if (!colon || colon - dest >= (long)sizeof host || size > MAX_DGRAM || window < 1) {
        fprintf(stderr, "usage: loop HOST:PORT N SIZE WINDOW (SIZE <= %d)\n", MAX_DGRAM);
        return 2;
    }
    memcpy(host, dest, (size_t)(colon - dest));
    host[colon - dest] = '\0';
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
    inet_pton(AF_INET, host, &addr.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("connect");
        return 1;
    }
    static unsigned char out[BATCH][MAX_DGRAM], in[BATCH][MAX_DGRAM];
    struct mmsghdr smsgs[BATCH], rmsgs[BATCH];
    struct iovec siovs[BATCH], riovs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        siovs[i] = (struct iovec){out[i], (size_t)size};
        riovs[i] = (struct iovec){in[i], MAX_DGRAM};
    }
    long sent = 0, received = 0;
    double start = now();
    while (received < count) {
        long room = window - (sent - received), left = count - sent;
        int n = (int)(room < left ? room : left);
        if (n > BATCH)
            n = BATCH;
        if (n > 0) {
            memset(smsgs, 0, sizeof smsgs[0] * (size_t)n);
            for (int i = 0; i < n; i++) {
                smsgs[i].msg_hdr.msg_iov = &siovs[i];
                smsgs[i].msg_hdr.msg_iovlen = 1;
            }
            int done = sendmmsg(fd, smsgs, (unsigned)n, 0);
            if (done > 0)
                sent += done;
        }
        if (sent - received >= window || sent == count) {
            struct pollfd pfd = {fd, POLLIN, 0};
            if (poll(&pfd, 1, 5000) <= 0) {
                fprintf(stderr, "loop: no reply for 5 s (%ld of %ld received)\n", received, count);
                return 1;
            }
        }
        memset(rmsgs, 0, sizeof rmsgs);
        for (int i = 0; i < BATCH; i++) {
            rmsgs[i].msg_hdr.msg_iov = &riovs[i];
            rmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, rmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (got > 0)
            received += got;
    }
    printf("%ld %.6f\n", count, now() - start);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "reflect") == 0)
        return reflect();
    if (argc == 6 && strcmp(argv[1], "loop") == 0)
        return loop(argv[2], atol(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: udp_loops reflect | udp_loops loop HOST:PORT N SIZE WINDOW\n");
    return 2;
}
