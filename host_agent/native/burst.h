/* Burst datagram I/O on a connected UDP socket: one system call hands over many equal-size datagrams; and the
 * transport's per-burst header work (checking received RESULTs, writing UPDATE headers) in one pass.
 *
 * Pure C, no Python: a file descriptor, a buffer of datagrams back to back and counts in, counts out. Sends use
 * UDP GSO (one sendmsg with a UDP_SEGMENT control message) or sendmmsg; receives use recvmsg with UDP GRO (the
 * kernel hands over a run of coalesced datagrams and their segment size) or recvmmsg. Never blocks.
 */
#ifndef NETAGG_BURST_H
#define NETAGG_BURST_H

#include <stddef.h>
#include <stdint.h>

enum na_send_mode { NA_SEND_GSO = 0, NA_SEND_MMSG = 1 };
enum na_recv_mode { NA_RECV_GRO = 0, NA_RECV_MMSG = 1 };

/* Largest datagrams per GSO call (the kernel's UDP_MAX_SEGMENTS on every supported kernel). */
#define NA_GSO_MAX_SEGMENTS 64
/* Room a single GRO receive may need: one coalesced run of up to 64 KiB. */
#define NA_GRO_ROOM 65536

struct na_send_result {
    size_t sent;  /* datagrams the kernel took */
    size_t calls; /* system calls made */
    int error;    /* errno that stopped the burst early (EAGAIN, ENOBUFS, ...), 0 if all went */
};

struct na_recv_result {
    size_t good;       /* datagrams of exactly `seg` bytes, now back to back at the start of the buffer */
    size_t wrong_size; /* datagrams of any other size (dropped) */
    size_t calls;      /* system calls made */
    int error;         /* errno other than EAGAIN/ECONNREFUSED that stopped the receive, 0 if none */
};

/* Send `count` datagrams of `seg` bytes each, stored back to back at `buf`. An ECONNREFUSED left by an earlier
 * ICMP error is cleared and the call retried once. */
struct na_send_result na_send_burst(int fd, const unsigned char *buf, size_t seg, size_t count,
                                    enum na_send_mode mode);

/* Receive until the socket is empty or `max_count` datagrams of `seg` bytes are stored. `buf` holds
 * `max_count * seg` bytes, plus NA_GRO_ROOM in GRO mode (a coalesced run is taken whole). */
struct na_recv_result na_recv_burst(int fd, unsigned char *buf, size_t seg, size_t max_count,
                                    enum na_recv_mode mode);

/* Turn UDP GRO on for the socket; returns 0 or an errno (the kernel does not offer it). */
int na_enable_gro(int fd);

/* Turn UDP GRO off again (a coalesced run still queued is then split by the kernel); returns 0 or an errno. */
int na_disable_gro(int fd);

/* Whether the kernel takes UDP_SEGMENT on this socket (GSO); returns 0 or an errno. Leaves the socket as it was. */
int na_probe_gso(int fd, size_t seg);

/* What a RESULT for this worker carries in its constant fields. */
struct na_expect {
    uint8_t b0;              /* version, msg_type RESULT, reserved bit clear, the job's size code */
    uint8_t job;
    uint8_t undefined_flags; /* flag bits that must be clear */
    uint32_t key;            /* this worker's key */
};

/* Per-slot state of the rounds in flight (native byte order), and one scratch byte per slot (all zero). */
struct na_slots {
    size_t window;
    const int8_t *phase; /* a slot's round is in flight when phase >= min_phase */
    int8_t min_phase;
    const uint32_t *tsi;
    const uint16_t *pool;
    uint8_t *seen;
};

struct na_match {
    size_t accepted, malformed, forged, duplicates;
};

/* Check a burst of `count` received messages of `seg` bytes (wire format v2 headers) as the transport does:
 * malformed (not a RESULT of this job and size, undefined flags, slot outside the window), forged (another
 * worker's key), duplicate (not the slot's round in flight, or a second copy in the burst), else accepted: its
 * position and slot are appended to out_pos/out_slot (room for `count` each), in arrival order. */
struct na_match na_match_results(const unsigned char *buf, size_t count, size_t seg, const struct na_expect *want,
                                 const struct na_slots *slots, int64_t *out_pos, int64_t *out_slot);

/* Write the per-round header fields (tsi, pool_index, exp, flags, op; big-endian) of the slots `which` into
 * their packets, slot s's packet at pkts + s * seg; the per-slot arrays are indexed by slot. */
void na_write_headers(unsigned char *pkts, size_t seg, const int64_t *which, size_t count, const uint32_t *tsi,
                      const uint16_t *pool, const int8_t *exp, const uint8_t *flags, const uint32_t *op);

#endif
