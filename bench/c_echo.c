/* Bare C echo loops, the limit the software switch is measured against: bursts of frames in with recvmmsg, back
 * out with sendmmsg, no protocol work at all. bench/softswitch.py compiles it with gcc into a temporary folder.
 *
 *     c_echo afpacket          (root) every frame received on any interface goes back out of it
 *     c_echo udp HOST:PORT     every datagram goes back to its sender
 *
 * Each prints "ready <address>" on stdout once its socket is bound, then loops until it is terminated.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

enum { BATCH = 64, FRAME = 65536 + 256, BUFFER_BYTES = 4 << 20 };

static unsigned char frames[BATCH][FRAME];
static struct mmsghdr in[BATCH], out[BATCH];
static struct iovec iov_in[BATCH], iov_out[BATCH];
static struct sockaddr_storage names[BATCH];

static int fail(const char *what)
{
    fprintf(stderr, "c_echo: %s: %s\n", what, strerror(errno));
    return 1;
}

/* Receive a burst (blocking for the first frame), send every frame that passes `keep` back to its source. */
static int loop(int fd, int packet)
{
    for (int i = 0; i < BATCH; i++) {
        iov_in[i] = (struct iovec){frames[i], FRAME};
        in[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_iov = &iov_in[i], .msg_iovlen = 1};
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++)
            in[i].msg_hdr.msg_namelen = sizeof names[i];
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR || errno == ENETDOWN)
                continue;
            return fail("recvmmsg");
        }
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (packet) {
                struct sockaddr_ll *ll = (struct sockaddr_ll *)&names[i];
                if (ll->sll_pkttype == PACKET_OUTGOING)
                    continue; /* older kernels: our own transmissions */
                ll->sll_protocol = 0;
            }
            iov_out[m] = (struct iovec){frames[i], in[i].msg_len};
            out[m].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = in[i].msg_hdr.msg_namelen,
                                             .msg_iov = &iov_out[m], .msg_iovlen = 1};
            m++;
        }
        for (int i = 0; i < m;) {
            int k = sendmmsg(fd, out + i, (unsigned)(m - i), 0);
            i += k > 0 ? k : 1; /* a frame the kernel refuses is skipped */
        }
    }
}

static void buffers(int fd)
{
    int size = BUFFER_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "afpacket") == 0) {
        int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        if (fd < 0)
            return fail("AF_PACKET socket (root?)");
        int one = 1;
        setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
        buffers(fd);
        printf("ready afpacket\n");
        fflush(stdout);
        return loop(fd, 1);
    }
    if (argc == 3 && strcmp(argv[1], "udp") == 0) {
        char host[64];
        const char *colon = strrchr(argv[2], ':');
        struct sockaddr_in addr = {.sin_family = AF_INET};
        if (colon == NULL || (size_t)(colon - argv[2]) >= sizeof host) {
            fprintf(stderr, "c_echo: %s: need HOST:PORT\n", argv[2]);
            return 2;
        }
        memcpy(host, argv[2], (size_t)(colon - argv[2]));
        host[colon - argv[2]] = 0;
        addr.sin_port = htons((unsigned short)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
            fprintf(stderr, "c_echo: %s: not an IPv4 address\n", host);
            return 2;
        }
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            return fail("UDP socket");
        buffers(fd);
        socklen_t len = sizeof addr;
        getsockname(fd, (struct sockaddr *)&addr, &len);
        printf("ready %s:%u\n", inet_ntoa(addr.sin_addr), ntohs(addr.sin_port));
        fflush(stdout);
        return loop(fd, 0);
    }
    fprintf(stderr, "usage: c_echo afpacket | c_echo udp HOST:PORT\n");
    return 2;
}
