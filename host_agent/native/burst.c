/* Burst datagram I/O: see burst.h. */
#define _GNU_SOURCE
#include "burst.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <netinet/udp.h> /* SOL_UDP, UDP_SEGMENT, UDP_GRO */
#include <sys/socket.h>
#include <sys/uio.h>


/* Largest UDP payload of one IPv4 datagram: a GSO super-datagram may not exceed it either. */
#define UDP_MAX_PAYLOAD 65507
/* Messages per recvmmsg/sendmmsg call. */
#define MMSG_BATCH 64

static int send_gso(int fd, const unsigned char *buf, size_t seg, size_t n)
{
    struct iovec iov = {(void *)buf, seg * n};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 1) { /* a single datagram needs no segmentation */
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)seg;
        memcpy(CMSG_DATA(cm), &size, sizeof size);
    }
    return sendmsg(fd, &msg, MSG_DONTWAIT) < 0 ? -1 : (int)n;
}

static int send_mmsg(int fd, const unsigned char *buf, size_t seg, size_t n)
{
    struct mmsghdr msgs[MMSG_BATCH];
    struct iovec iovs[MMSG_BATCH];
    if (n > MMSG_BATCH)
        n = MMSG_BATCH;
    memset(msgs, 0, n * sizeof msgs[0]);
    for (size_t i = 0; i < n; i++) {
        iovs[i] = (struct iovec){(void *)(buf + i * seg), seg};
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT);
}

struct na_send_result na_send_burst(int fd, const unsigned char *buf, size_t seg, size_t count,
                                    enum na_send_mode mode)
{
    struct na_send_result r = {0, 0, 0};
    size_t per_call = mode == NA_SEND_GSO ? UDP_MAX_PAYLOAD / (seg ? seg : 1) : MMSG_BATCH;
    if (per_call > NA_GSO_MAX_SEGMENTS)
        per_call = NA_GSO_MAX_SEGMENTS;
    if (per_call == 0)
        per_call = 1;
    int retried = 0;
    while (r.sent < count) {
        size_t n = count - r.sent < per_call ? count - r.sent : per_call;
        const unsigned char *p = buf + r.sent * seg;
        int done = mode == NA_SEND_GSO ? send_gso(fd, p, seg, n) : send_mmsg(fd, p, seg, n);
        r.calls++;
        if (done < 0) {
            if (errno == ECONNREFUSED && !retried) { /* an earlier datagram's ICMP error, now cleared */
                retried = 1;
                continue;
            }
            r.error = errno;
            break;
        }
        r.sent += (size_t)done;
    }
    return r;
}

/* The segment size of a GRO receive from its control message, or `len` (a single datagram). */
static size_t gro_segment(struct msghdr *msg, size_t len)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(cm), sizeof size);
            return size > 0 ? (size_t)size : len;
        }
    }
    return len;
}

static int soft_error(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ECONNREFUSED; }

static void recv_gro(int fd, unsigned char *buf, size_t seg, size_t max_count, struct na_recv_result *r)
{
    size_t limit = max_count * seg;
    while (r->good * seg < limit) {
        struct iovec iov = {buf + r->good * seg, NA_GRO_ROOM};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t len = recvmsg(fd, &msg, MSG_DONTWAIT);
        r->calls++;
        if (len < 0) {
            if (errno == ECONNREFUSED)
                continue;
            if (!soft_error(errno))
                r->error = errno;
            return;
        }
        if (msg.msg_flags & MSG_TRUNC) { /* cannot happen below 64 KiB; never trust a cut run */
            r->wrong_size++;
            continue;
        }
        size_t size = gro_segment(&msg, (size_t)len);
        if (size != seg) { /* a run of datagrams of another size: every one of them is wrong */
            r->wrong_size += len ? ((size_t)len + size - 1) / size : 1;
            continue;
        }
        size_t whole = (size_t)len / seg;
        r->good += whole; /* a shorter last segment stays behind them and is overwritten */
        if ((size_t)len % seg)
            r->wrong_size++;
    }
}

static void recv_mmsg(int fd, unsigned char *buf, size_t seg, size_t max_count, struct na_recv_result *r)
{
    struct mmsghdr msgs[MMSG_BATCH];
    struct iovec iovs[MMSG_BATCH];
    while (r->good < max_count) {
        size_t n = max_count - r->good < MMSG_BATCH ? max_count - r->good : MMSG_BATCH;
        memset(msgs, 0, n * sizeof msgs[0]);
        for (size_t i = 0; i < n; i++) {
            iovs[i] = (struct iovec){buf + (r->good + i) * seg, seg};
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        /* MSG_TRUNC: msg_len is the datagram's real length, so a longer one is seen as wrong, not cut to fit. */
        int got = recvmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT | MSG_TRUNC, NULL);
        r->calls++;
        if (got < 0) {
            if (errno == ECONNREFUSED)
                continue;
            if (!soft_error(errno))
                r->error = errno;
            return;
        }
        size_t kept = r->good;
        for (int i = 0; i < got; i++) {
            if (msgs[i].msg_len != seg) {
                r->wrong_size++;
                continue;
            }
            unsigned char *at = buf + (r->good + (size_t)i) * seg, *to = buf + kept * seg;
            if (to != at)
                memmove(to, at, seg);
            kept++;
        }
        r->good = kept;
        if ((size_t)got < n)
            return; /* the socket is empty */
    }
}

struct na_recv_result na_recv_burst(int fd, unsigned char *buf, size_t seg, size_t max_count,
                                    enum na_recv_mode mode)
{
    struct na_recv_result r = {0, 0, 0, 0};
    if (seg == 0)
        return r;
    if (mode == NA_RECV_GRO)
        recv_gro(fd, buf, seg, max_count, &r);
    else
        recv_mmsg(fd, buf, seg, max_count, &r);
    return r;
}

int na_enable_gro(int fd)
{
    int on = 1;
    return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on) < 0 ? errno : 0;
}

int na_disable_gro(int fd)
{
    int off = 0;
    return setsockopt(fd, SOL_UDP, UDP_GRO, &off, sizeof off) < 0 ? errno : 0;
}

int na_probe_gso(int fd, size_t seg)
{
    int size = (int)seg, off = 0;
    if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, sizeof size) < 0)
        return errno;
    setsockopt(fd, SOL_UDP, UDP_SEGMENT, &off, sizeof off);
    return 0;
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Header offsets of wire format v2 (netagg/wire.py): byte 0, job, tsi, pool_index, exp, flags, key, op. */
enum { H_B0 = 0, H_JOB = 1, H_TSI = 2, H_POOL = 6, H_EXP = 8, H_FLAGS = 9, H_KEY = 10, H_OP = 14 };

struct na_match na_match_results(const unsigned char *buf, size_t count, size_t seg, const struct na_expect *want,
                                 const struct na_slots *slots, int64_t *out_pos, int64_t *out_slot)
{
    struct na_match r = {0, 0, 0, 0};
    for (size_t i = 0; i < count; i++) {
        const unsigned char *h = buf + i * seg;
        if (h[H_B0] != want->b0 || h[H_JOB] != want->job || (h[H_FLAGS] & want->undefined_flags)) {
            r.malformed++;
            continue;
        }
        if (load_be32(h + H_KEY) != want->key) {
            r.forged++;
            continue;
        }
        uint16_t pool = (uint16_t)(h[H_POOL] << 8 | h[H_POOL + 1]);
        size_t s = pool & 0x7FFF;
        if (s >= slots->window) {
            r.malformed++;
            continue;
        }
        if (slots->phase[s] < slots->min_phase || load_be32(h + H_TSI) != slots->tsi[s] || pool != slots->pool[s] ||
            slots->seen[s]) {
            r.duplicates++; /* not the slot's round in flight, or a second copy of its RESULT in this burst */
            continue;
        }
        slots->seen[s] = 1;
        out_pos[r.accepted] = (int64_t)i;
        out_slot[r.accepted] = (int64_t)s;
        r.accepted++;
    }
    for (size_t k = 0; k < r.accepted; k++)
        slots->seen[out_slot[k]] = 0;
    return r;
}

void na_write_headers(unsigned char *pkts, size_t seg, const int64_t *which, size_t count, const uint32_t *tsi,
                      const uint16_t *pool, const int8_t *exp, const uint8_t *flags, const uint32_t *op)
{
    for (size_t k = 0; k < count; k++) {
        int64_t s = which[k];
        unsigned char *h = pkts + (size_t)s * seg;
        store_be32(h + H_TSI, tsi[s]);
        h[H_POOL] = (unsigned char)(pool[s] >> 8);
        h[H_POOL + 1] = (unsigned char)pool[s];
        h[H_EXP] = (unsigned char)exp[s];
        h[H_FLAGS] = flags[s];
        store_be32(h + H_OP, op[s]);
    }
}
