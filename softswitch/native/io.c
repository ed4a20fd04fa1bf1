/* Burst I/O of the software switch (io.h): recvmmsg into a landing area, copied into bursts (UDP GSO frames split,
 * offloaded checksums completed, UDP-mode headers synthesized, GRO runs split), and sendmmsg of output bursts (UDP
 * mode: GSO messages per destination). */
#define _GNU_SOURCE
#include "io.h"

#include <errno.h>
#include <netinet/udp.h> /* SOL_UDP, UDP_SEGMENT, UDP_GRO */
#include <stdlib.h>
#include <string.h>

#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5 /* Linux >= 4.18; older headers lack the name */
#endif

static inline uint32_t load16(const uint8_t *p) { return (uint32_t)(p[0] << 8 | p[1]); }

static inline void store16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void store32(uint8_t *p, uint32_t v)
{
    store16(p, v >> 16);
    store16(p + 2, v);
}

/* One's complement sum of big-endian 16-bit words (RFC 1071), not yet folded. */
static uint64_t sum16(const uint8_t *p, size_t n, uint64_t s)
{
    for (; n > 1; p += 2, n -= 2)
        s += load16(p);
    if (n)
        s += (uint32_t)p[0] << 8;
    return s;
}

static uint32_t fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

int rx_init(struct rx_queue *q, int fd, int mode, int64_t port, int filter_outgoing)
{
    memset(q, 0, sizeof *q);
    q->landing = malloc((size_t)IO_BATCH * IO_SLOT_BYTES);
    if (q->landing == NULL)
        return ENOMEM;
    q->fd = fd;
    q->mode = mode;
    q->port = port;
    q->filter_outgoing = filter_outgoing;
    for (int i = 0; i < IO_BATCH; i++) {
        struct msghdr *h = &q->msgs[i].msg_hdr;
        uint8_t *slot = q->landing + (size_t)i * IO_SLOT_BYTES;
        if (mode == IO_PACKET) {
            q->iovs[i][0] = (struct iovec){&q->vnet[i], sizeof q->vnet[i]};
            q->iovs[i][1] = (struct iovec){slot, IO_SLOT_BYTES};
            h->msg_iovlen = 2;
        } else {
            q->iovs[i][0] = (struct iovec){slot, IO_SLOT_BYTES};
            h->msg_iovlen = 1;
        }
        h->msg_iov = q->iovs[i];
        h->msg_name = &q->names[i];
    }
    int on = 1;
    if (mode == IO_UDP && setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on) == 0)
        q->gro = 1; /* a host's GSO burst arrives as one run: one landing slot instead of up to 64 */
    return 0;
}

void rx_free(struct rx_queue *q)
{
    free(q->landing);
    q->landing = NULL;
}

bool rx_pending(const struct rx_queue *q) { return q->next < q->received; }

/* Room for one more frame of `n` bytes? */
static bool fits(const struct io_frames *f, size_t n) { return f->count < f->capacity && f->used + n <= f->size; }

static uint8_t *append(struct io_frames *f, size_t n, int64_t port)
{
    struct frame_ref *row = &f->rows[f->count++];
    row->offset = (int64_t)f->used;
    row->length = (int64_t)n;
    row->port = port;
    uint8_t *at = f->buf + f->used;
    f->used += n;
    return at;
}

/* A frame no empty burst could hold is dropped (else the queue would never move on). */
static bool never_fits(const struct io_frames *f, size_t n) { return f->capacity == 0 || n > f->size; }

/* A checksum the sender left to offload (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field holds the pseudo-header sum. */
static void complete_checksum(uint8_t *frame, size_t n, const struct virtio_net_hdr *v)
{
    size_t start = v->csum_start, at = (size_t)v->csum_start + v->csum_offset;
    if (start < n && at + 2 <= n)
        store16(frame + at, ~fold(sum16(frame + start, n - start, 0)) & 0xFFFF);
}

/* Copy the datagrams of a UDP GSO frame into `f`, from datagram q->segment on; false when `f` filled up first. */
static bool split_udp_gso(struct rx_queue *q, const uint8_t *p, size_t n, const struct virtio_net_hdr *v,
                          struct io_frames *f)
{
    const size_t gso = v->gso_size;
    const size_t ihl = n > L_IP ? (size_t)(p[L_IP] & 0x0F) * 4 : 0;
    const size_t l4 = L_IP + ihl, data = l4 + 8;
    if (gso == 0 || n <= data || load16(p + L_ETHERTYPE) != 0x0800 || (p[L_IP] >> 4) != 4 || ihl < 20 ||
        p[L_IP_PROTO] != 17) {
        q->stats.unsplit++;
        return true;
    }
    const size_t segments = (n - data + gso - 1) / gso;
    for (size_t k = q->segment; k < segments; k++) {
        const size_t at = data + k * gso, len = n - at < gso ? n - at : gso;
        if (!fits(f, data + len)) {
            if (never_fits(f, data + len)) {
                q->stats.unsplit++;
                return true;
            }
            q->segment = k;
            return false;
        }
        uint8_t *o = append(f, data + len, q->port);
        memcpy(o, p, data);
        memcpy(o + data, p + at, len);
        /* IPv4: total length, an id per datagram (as the kernel's own segmentation numbers them), checksum. */
        store16(o + L_IP + 2, (uint32_t)(ihl + 8 + len));
        store16(o + L_IP + 4, load16(p + L_IP + 4) + (uint32_t)k);
        store16(o + L_IP + 10, 0);
        store16(o + L_IP + 10, ~fold(sum16(o + L_IP, ihl, 0)) & 0xFFFF);
        /* UDP: length and a full checksum (a GSO sender always leaves it to offload). */
        store16(o + l4 + 4, (uint32_t)(8 + len));
        store16(o + l4 + 6, 0);
        uint64_t s = sum16(o + L_IP_SRC, 8, 17 + 8 + len);
        uint32_t check = ~fold(sum16(o + l4, 8 + len, s)) & 0xFFFF;
        store16(o + l4 + 6, check ? check : 0xFFFF);
        q->stats.frames++;
    }
    q->stats.gso_frames++;
    return true;
}

/* The segment size of a GRO receive from its control message, or 0 (a single datagram). */
static size_t gro_segment(const struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof size);
            return size > 0 ? (size_t)size : 0;
        }
    }
    return 0;
}

/* UDP mode: landing datagram (or GRO run of datagrams) `i` as frames with synthesized headers, from datagram
 * q->segment on; false when `f` filled up first. */
static bool deliver_udp(struct rx_queue *q, unsigned i, const uint8_t *p, size_t n, struct io_frames *f,
                        const struct udp_framing *u)
{
    const struct sockaddr_in *from = &q->names[i].in;
    size_t seg = q->gro ? gro_segment(&q->msgs[i].msg_hdr) : 0;
    if (seg == 0 || seg >= n)
        seg = n;
    const size_t segments = n ? (n + seg - 1) / seg : 1;
    for (size_t k = q->segment; k < segments; k++) {
        const size_t at = k * seg, len = n - at < seg ? n - at : seg;
        const size_t need = L_AGG + len;
        if (!fits(f, need)) {
            if (never_fits(f, need)) {
                q->stats.truncated++;
                continue;
            }
            q->segment = k;
            return false;
        }
        uint8_t *o = append(f, need, q->port);
        /* Ethernet: the aggregation MAC, source 0, IPv4. IPv4 without options, TTL 64, UDP, checksum 0 (never
         * verified): from the sender to the aggregation address. UDP: the sender's port to AGG_UDP_PORT. */
        memcpy(o, u->mac, 6);
        memset(o + 6, 0, 6);
        store16(o + L_ETHERTYPE, 0x0800);
        o[L_IP] = 0x45;
        o[L_IP + 1] = 0;
        store16(o + L_IP + 2, (uint32_t)(20 + 8 + len));
        store32(o + L_IP + 4, 0);
        o[L_IP + 8] = 64;
        o[L_IP_PROTO] = 17;
        store16(o + L_IP + 10, 0);
        memcpy(o + L_IP_SRC, &from->sin_addr.s_addr, 4);
        store32(o + L_IP_DST, u->addr);
        memcpy(o + L_UDP, &from->sin_port, 2);
        store16(o + L_UDP_DPORT, u->port);
        store16(o + L_UDP_LENGTH, (uint32_t)(8 + len));
        store16(o + L_UDP_LENGTH + 2, 0);
        memcpy(o + L_AGG, p + at, len);
        q->stats.frames++;
    }
    if (segments > 1)
        q->stats.gso_frames++;
    return true;
}

/* Copy landing frame `i` into `f`; false (nothing copied, or a GSO frame partly) when `f` has no room for it. */
static bool deliver(struct rx_queue *q, unsigned i, struct io_frames *f, const struct udp_framing *u)
{
    const struct msghdr *h = &q->msgs[i].msg_hdr;
    const uint8_t *p = q->landing + (size_t)i * IO_SLOT_BYTES;
    size_t n = q->msgs[i].msg_len;
    if (h->msg_flags & MSG_TRUNC) {
        q->stats.truncated++;
        return true;
    }
    if (q->mode == IO_UDP)
        return deliver_udp(q, i, p, n, f, u);
    /* Packet socket: the virtio_net_hdr came first. */
    if (n < sizeof q->vnet[i]) {
        q->stats.truncated++;
        return true;
    }
    n -= sizeof q->vnet[i];
    if (q->filter_outgoing && q->names[i].ll.sll_pkttype == PACKET_OUTGOING)
        return true;
    const struct virtio_net_hdr *v = &q->vnet[i];
    const unsigned gso = v->gso_type & ~VIRTIO_NET_HDR_GSO_ECN;
    if (gso == VIRTIO_NET_HDR_GSO_UDP_L4)
        return split_udp_gso(q, p, n, v, f);
    if (gso != VIRTIO_NET_HDR_GSO_NONE) { /* TCP segmentation offload: the hosts must turn it off */
        q->stats.unsplit++;
        return true;
    }
    if (!fits(f, n)) {
        if (!never_fits(f, n))
            return false;
        q->stats.truncated++;
        return true;
    }
    uint8_t *o = append(f, n, q->port);
    memcpy(o, p, n);
    if (v->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)
        complete_checksum(o, n, v);
    q->stats.frames++;
    return true;
}

size_t rx_receive(struct rx_queue *q, struct io_frames *f, size_t budget, const struct udp_framing *u)
{
    const size_t before = f->count;
    bool called = false;
    for (;;) {
        for (; q->next < q->received; q->next++, q->segment = 0)
            if (!deliver(q, q->next, f, u))
                return f->count - before; /* the burst is full: the rest waits for the next call */
        q->next = q->received = 0;
        size_t want = budget < IO_BATCH ? budget : IO_BATCH;
        if (want > f->capacity - f->count)
            want = f->capacity - f->count;
        if (called || want == 0)
            break;
        for (size_t i = 0; i < want; i++) {
            q->msgs[i].msg_hdr.msg_flags = 0;
            q->msgs[i].msg_hdr.msg_namelen = sizeof q->names[i];
            if (q->gro) {
                q->msgs[i].msg_hdr.msg_control = q->control[i].buf;
                q->msgs[i].msg_hdr.msg_controllen = sizeof q->control[i].buf;
            }
        }
        int got = recvmmsg(q->fd, q->msgs, (unsigned)want, MSG_DONTWAIT, NULL);
        called = true;
        if (got < 0) {
            /* A pending socket error (ENETDOWN after a link flap) is read, and so cleared, here. */
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                q->stats.errors++;
                q->stats.last_error = errno;
            }
            break;
        }
        q->received = (unsigned)got;
    }
    return f->count - before;
}

/* sendmmsg until every message went or failed; a failed one is counted and skipped. */
static void send_all(int fd, struct mmsghdr *m, unsigned n, struct tx_result *r)
{
    unsigned i = 0;
    while (i < n) {
        int k = sendmmsg(fd, m + i, n - i, MSG_DONTWAIT);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            r->errors++;
            r->last_error = errno;
            i++;
            continue;
        }
        r->sent += (unsigned)k;
        i += (unsigned)k;
    }
}

/* Frames looked at per pass of tx_packet (the `taken` marks live on the stack). */
#define TX_WINDOW 1024

void tx_packet(const int32_t *fds, size_t nfds, const struct io_frames *f, struct tx_result *r)
{
    static struct virtio_net_hdr no_offload; /* all zero: no checksum to complete, no segmentation */
    struct mmsghdr m[IO_BATCH];
    struct iovec iov[IO_BATCH][2];
    uint8_t taken[TX_WINDOW];
    for (size_t base = 0; base < f->count; base += TX_WINDOW) {
        const size_t end = f->count - base < TX_WINDOW ? f->count : base + TX_WINDOW;
        memset(taken, 0, sizeof taken);
        for (size_t i = base; i < end; i++) {
            if (taken[i - base])
                continue;
            const int64_t port = f->rows[i].port;
            if (port < 0 || (size_t)port >= nfds || fds[port] < 0) {
                r->unroutable++;
                continue;
            }
            /* Every frame of this port in the window, in order, one sendmmsg per IO_BATCH of them. */
            unsigned batch = 0;
            for (size_t j = i; j < end; j++) {
                if (taken[j - base] || f->rows[j].port != port)
                    continue;
                taken[j - base] = 1;
                iov[batch][0] = (struct iovec){&no_offload, sizeof no_offload};
                iov[batch][1] = (struct iovec){f->buf + f->rows[j].offset, (size_t)f->rows[j].length};
                m[batch] = (struct mmsghdr){.msg_hdr = {.msg_iov = iov[batch], .msg_iovlen = 2}};
                if (++batch == IO_BATCH) {
                    send_all(fds[port], m, batch, r);
                    batch = 0;
                }
            }
            if (batch)
                send_all(fds[port], m, batch, r);
        }
    }
}

/* Whether the frame is an IPv4/UDP datagram leaving on `port_number`; its payload's length (what the UDP length
 * announces, within the frame: Ethernet padding stays behind). */
static bool udp_payload(const uint8_t *p, size_t n, int64_t port, int64_t port_number, size_t *len)
{
    if (port != port_number || n < L_AGG || load16(p + L_ETHERTYPE) != 0x0800 || p[L_IP] != 0x45 ||
        p[L_IP_PROTO] != 17)
        return false;
    size_t end = L_UDP + load16(p + L_UDP_LENGTH);
    if (end > n)
        end = n;
    *len = end > L_AGG ? end - L_AGG : 0;
    return true;
}

/* Largest UDP payload of one IPv4 datagram (a GSO message may not exceed it either), and datagrams per message. */
#define UDP_MAX_PAYLOAD 65507
#define GSO_MAX_SEGMENTS 64
/* Set for good once the kernel refuses a GSO message (an old kernel): one datagram per message from then on. */
static int gso_refused;

/* A batch of messages for sendmmsg, each one datagram or a GSO run of equal-size datagrams to one destination. */
struct udp_batch {
    struct mmsghdr m[IO_BATCH];
    struct iovec iov[IO_BATCH * GSO_MAX_SEGMENTS];
    struct sockaddr_in to[IO_BATCH];
    union {
        struct cmsghdr align;
        uint8_t buf[CMSG_SPACE(sizeof(uint16_t))];
    } control[IO_BATCH];
    unsigned count, iovs;
};

static void flush_udp(int fd, struct udp_batch *b, struct tx_result *r)
{
    unsigned i = 0;
    while (i < b->count) {
        int k = sendmmsg(fd, b->m + i, b->count - i, MSG_DONTWAIT);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            const unsigned datagrams = (unsigned)b->m[i].msg_hdr.msg_iovlen;
            if (b->m[i].msg_hdr.msg_controllen && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP) &&
                !gso_refused) {
                gso_refused = 1; /* resend this message's datagrams one by one */
                for (unsigned d = 0; d < datagrams; d++) {
                    struct msghdr h = b->m[i].msg_hdr;
                    h.msg_iov += d;
                    h.msg_iovlen = 1;
                    h.msg_control = NULL;
                    h.msg_controllen = 0;
                    if (sendmsg(fd, &h, MSG_DONTWAIT) < 0) {
                        r->errors++;
                        r->last_error = errno;
                    } else {
                        r->sent++;
                    }
                }
            } else {
                r->errors += datagrams;
                r->last_error = errno;
            }
            i++;
            continue;
        }
        for (unsigned j = i; j < i + (unsigned)k; j++)
            r->sent += (unsigned)b->m[j].msg_hdr.msg_iovlen;
        i += (unsigned)k;
    }
    b->count = b->iovs = 0;
}

void tx_udp(int fd, int64_t port_number, const struct io_frames *f, struct tx_result *r)
{
    static struct udp_batch b; /* large (the iovecs); the switch sends from one thread */
    uint8_t taken[TX_WINDOW];
    b.count = b.iovs = 0;
    for (size_t base = 0; base < f->count; base += TX_WINDOW) {
        const size_t end = f->count - base < TX_WINDOW ? f->count : base + TX_WINDOW;
        memset(taken, 0, sizeof taken);
        for (size_t i = base; i < end; i++) {
            if (taken[i - base])
                continue;
            const uint8_t *p = f->buf + f->rows[i].offset;
            size_t len;
            if (!udp_payload(p, (size_t)f->rows[i].length, f->rows[i].port, port_number, &len)) {
                r->unroutable++;
                continue;
            }
            if (b.count == IO_BATCH)
                flush_udp(fd, &b, r);
            const unsigned k = b.count;
            struct mmsghdr *m = &b.m[k];
            b.to[k] = (struct sockaddr_in){.sin_family = AF_INET};
            memcpy(&b.to[k].sin_addr.s_addr, p + L_IP_DST, 4);
            memcpy(&b.to[k].sin_port, p + L_UDP_DPORT, 2);
            *m = (struct mmsghdr){.msg_hdr = {.msg_name = &b.to[k], .msg_namelen = sizeof b.to[k],
                                              .msg_iov = &b.iov[b.iovs], .msg_iovlen = 1}};
            b.iov[b.iovs++] = (struct iovec){(void *)(p + L_AGG), len};
            taken[i - base] = 1;
            b.count++;
            /* The same destination's later datagrams of this size in the window join it as GSO segments. */
            size_t segments = 1;
            for (size_t j = i + 1; j < end && !gso_refused && len > 0 && segments < GSO_MAX_SEGMENTS &&
                                   (segments + 1) * len <= UDP_MAX_PAYLOAD;
                 j++) {
                const uint8_t *q = f->buf + f->rows[j].offset;
                size_t other;
                if (taken[j - base] || !udp_payload(q, (size_t)f->rows[j].length, f->rows[j].port, port_number, &other) ||
                    memcmp(q + L_IP_DST, p + L_IP_DST, 4) != 0 || memcmp(q + L_UDP_DPORT, p + L_UDP_DPORT, 2) != 0)
                    continue;
                if (other != len)
                    break; /* another size for this destination: it goes next, in order */
                b.iov[b.iovs++] = (struct iovec){(void *)(q + L_AGG), len};
                taken[j - base] = 1;
                segments++;
            }
            m->msg_hdr.msg_iovlen = segments;
            if (segments > 1) {
                m->msg_hdr.msg_control = b.control[k].buf;
                m->msg_hdr.msg_controllen = sizeof b.control[k].buf;
                struct cmsghdr *c = CMSG_FIRSTHDR(&m->msg_hdr);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size = (uint16_t)len;
                memcpy(CMSG_DATA(c), &size, sizeof size);
            }
        }
    }
    if (b.count)
        flush_udp(fd, &b, r);
}
