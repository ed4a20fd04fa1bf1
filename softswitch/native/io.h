/* The software switch's burst I/O: many frames per system call between a socket and the kernel's bursts.
 *
 * Receive: one recvmmsg of up to IO_BATCH frames into a landing area, then each frame is copied into the burst
 * the aggregation kernel reads (struct io_frames). What does not fit the burst stays in the landing area for the
 * next call (rx_pending). Packet sockets must have PACKET_VNET_HDR on: a UDP GSO frame (a host's burst that
 * crossed a veth as one frame) is split here into the datagrams it stands for, and a checksum left to offload is
 * completed. UDP sockets get the Ethernet/IPv4/UDP headers of the switch's UDP mode (docs/softswitch.md); with
 * UDP GRO on (where the kernel has it) a run of coalesced datagrams is split the same way.
 * Send: sendmmsg, one call per port and batch of frames (packet sockets) or per batch (UDP; there the datagrams of
 * one destination go out as UDP GSO messages of up to 64, where the kernel takes them).
 *
 * Pure C, no Python objects; softswitch/native/module.c binds it.
 */
#ifndef NETAGG_SWITCH_IO_H
#define NETAGG_SWITCH_IO_H

#include <netinet/in.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "kernel.h"

enum io_mode { IO_PACKET = 0, IO_UDP = 1 };

/* Frames per recvmmsg / sendmmsg call. */
#define IO_BATCH 64
/* Room of one landing slot: a 64 KiB GSO frame with its Ethernet header and a VLAN tag. */
#define IO_SLOT_BYTES (65536 + 256)

/* A burst being filled (the kernel's input) or sent (its output): a buffer and one row per frame. */
struct io_frames {
    uint8_t *buf;
    size_t size, used;
    struct frame_ref *rows;
    size_t capacity, count;
};

/* UDP mode: where synthesized headers say a datagram went (the aggregation MAC and address, AGG_UDP_PORT). */
struct udp_framing {
    uint8_t mac[6];
    uint32_t addr;
    uint32_t port;
};

struct rx_stats {
    uint64_t frames;       /* frames handed to bursts (a GSO frame's datagrams counted one by one) */
    uint64_t gso_frames;   /* UDP GSO frames (packet sockets) or GRO runs (UDP) split */
    uint64_t truncated;    /* frames larger than a landing slot: dropped */
    uint64_t unsplit;      /* GSO frames of another kind (TCP) or malformed: dropped */
    uint64_t errors;       /* failed receive calls (e.g. ENETDOWN while a link flaps) */
    int last_error;
};

struct rx_queue {
    int fd, mode, filter_outgoing;
    int64_t port;
    uint8_t *landing; /* IO_BATCH slots of IO_SLOT_BYTES */
    struct mmsghdr msgs[IO_BATCH];
    struct iovec iovs[IO_BATCH][2];
    struct virtio_net_hdr vnet[IO_BATCH];
    union { /* UDP mode: the UDP_GRO control message (the segment size of a coalesced run) */
        struct cmsghdr align;
        uint8_t buf[CMSG_SPACE(sizeof(int))];
    } control[IO_BATCH];
    int gro; /* UDP mode: UDP GRO is on */
    union {
        struct sockaddr_in in;
        struct sockaddr_ll ll;
    } names[IO_BATCH];
    unsigned received, next; /* landing frames [next, received) are still to be copied into a burst */
    size_t segment;          /* of frame `next`, when it is a GSO frame: the next datagram to copy */
    struct rx_stats stats;
};

/* 0, or an errno (ENOMEM). `filter_outgoing`: skip frames this host sent (kernels without
 * PACKET_IGNORE_OUTGOING). */
int rx_init(struct rx_queue *q, int fd, int mode, int64_t port, int filter_outgoing);
void rx_free(struct rx_queue *q);
/* Append frames to `f`: the pending ones first, then, if all of them fit, those of one recvmmsg of at most
 * `budget` frames. Returns how many frames were appended. Never blocks. `u` is used in UDP mode only. */
size_t rx_receive(struct rx_queue *q, struct io_frames *f, size_t budget, const struct udp_framing *u);
bool rx_pending(const struct rx_queue *q);

struct tx_result {
    uint64_t sent, errors, unroutable;
    int last_error;
};

/* Send every frame of `f` on the packet socket of its port (`fds[port]`, -1: no such port), which has
 * PACKET_VNET_HDR on; order is kept per port. */
void tx_packet(const int32_t *fds, size_t nfds, const struct io_frames *f, struct tx_result *r);
/* Send every frame of `f` that leaves on `port_number` as IPv4/UDP from the UDP socket `fd`, to the frame's IPv4
 * destination and UDP destination port; the others are unroutable. Equal-size datagrams to one destination go as
 * UDP GSO messages (order kept per destination) until the kernel refuses GSO once; then one message each. */
void tx_udp(int fd, int64_t port_number, const struct io_frames *f, struct tx_result *r);

#endif
