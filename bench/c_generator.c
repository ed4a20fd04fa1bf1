/* The software switch benchmark's load generator in C (bench/softswitch.py compiles it with gcc into a temporary
 * folder): the same closed loop as the Python generator there, at about the C echo's cost per frame (it does the
 * same system calls on the same frames) and far below the Python echo's or the switch's, so that their figures
 * are their own and not the generator's.
 *
 *     c_generator --frames FILE --window W --tsi-at N --job-at N --job J --seconds S --warmup S
 *                 --retransmit S --drain S --rounds R0,R1,... IFACE...           (root: AF_PACKET sockets)
 *
 * One worker per interface. FILE holds the UPDATE frames the Python side built from netagg/wire.py, all of one
 * size, in the order (interface, slot, set): this program knows no header layout besides the two byte offsets it
 * is given (the big-endian 32-bit tsi it writes into a frame before sending it, and the job byte it checks in
 * what comes back). Slot s in round r carries tsi r * W + s (mod 2^32) and set r & 1; R0,R1,... are the rounds the
 * slots start at (the switch remembers each slot's last round across runs).
 *
 * Every slot starts a round at once; a slot starts its next round only when all its RESULTs arrived, and a round
 * missing RESULTs after the retransmit timeout has the missing workers' UPDATEs resent (counted as loss). After
 * the warm-up it prints "counting", after the timed window "stopped"; then it issues no new rounds, waits up to
 * the drain time for those in flight and prints one line:
 *
 *     result results=N rounds=N seconds=F sent=N resent=N unanswered=N ignored=N cpu=F next_rounds=R0,R1,...
 *
 * results, rounds, seconds and cpu (this process's CPU seconds) cover the timed window; sent, resent and ignored
 * (frames that answer no outstanding UPDATE) the whole run; next_rounds are the slots' rounds for the next run.
 * Frames move in bursts: recvmmsg per port, and the frames a burst's completed rounds produce go out with one
 * sendmmsg. Bad arguments: one line on stderr, exit status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { MAX_PORTS = 32, BATCH = 64, RECV_BYTES = 65536, BUFFER_BYTES = 4 << 20, MAX_WINDOW = 1 << 16 };

static int nports;
static int window;
static size_t frame_size;
static size_t tsi_at, job_at;
static unsigned job;
static unsigned char *frames; /* [port][slot][set] */
static uint64_t *rnd;         /* each slot's current round */
static uint32_t *missing;     /* each slot's ports whose RESULT has not arrived */
static double *sent_at;
static uint64_t sent, resent, ignored, results, rounds;

/* Receive: one socket per port. Send: one unbound socket for all ports (each frame names its interface), so
 * the frames of a burst go out with one sendmmsg whatever their ports. Each slot has at most one frame per
 * port queued. */
static int fds[MAX_PORTS];
static int send_fd;
static struct sockaddr_ll port_addr[MAX_PORTS];
static struct mmsghdr *queue;
static struct iovec *queue_iov;
static int queued;

static unsigned char inbuf[BATCH][RECV_BYTES];
static struct mmsghdr in[BATCH];
static struct iovec in_iov[BATCH];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage_error(const char *what, const char *value)
{
    fprintf(stderr, "c_generator: %s%s%s\n", what, value ? ": " : "", value ? value : "");
    exit(2);
}

static void system_error(const char *what, const char *name)
{
    fprintf(stderr, "c_generator: %s %s: %s\n", what, name, strerror(errno));
    exit(1);
}

static double seconds_arg(const char *name, const char *text)
{
    char *end;
    double value = strtod(text, &end);
    if (*text == 0 || *end != 0 || !(value >= 0 && value < 3600))
        usage_error(name, text);
    return value;
}

static unsigned long count_arg(const char *name, const char *text, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (*text == 0 || *end != 0 || errno || value > max)
        usage_error(name, text);
    return value;
}

static unsigned char *frame_of(int port, int slot, int set)
{
    return frames + (((size_t)port * (size_t)window + (size_t)slot) * 2 + (size_t)set) * frame_size;
}

static uint32_t tsi_of(int slot)
{
    return (uint32_t)(rnd[slot] * (uint64_t)window + (uint64_t)slot);
}

/* Queue port's UPDATE of slot's current round (its tsi written into the template first). */
static void queue_update(int port, int slot)
{
    unsigned char *frame = frame_of(port, slot, (int)(rnd[slot] & 1));
    uint32_t tsi = htonl(tsi_of(slot));
    memcpy(frame + tsi_at, &tsi, sizeof tsi);
    queue_iov[queued] = (struct iovec){frame, frame_size};
    queue[queued].msg_hdr = (struct msghdr){.msg_name = &port_addr[port], .msg_namelen = sizeof port_addr[port],
                                            .msg_iov = &queue_iov[queued], .msg_iovlen = 1};
    queued++;
    sent++;
}

static void flush(void)
{
    for (int i = 0; i < queued;) {
        int k = sendmmsg(send_fd, queue + i, (unsigned)(queued - i), 0);
        i += k > 0 ? k : 1; /* a frame the kernel refuses is lost: the retransmit timeout resends it */
    }
    queued = 0;
}

static void start_round(int slot, double at)
{
    for (int p = 0; p < nports; p++)
        queue_update(p, slot);
    missing[slot] = (uint32_t)((1ull << nports) - 1);
    sent_at[slot] = at;
}

/* Take a received frame from port p; the slot whose round it completed, or -1. */
static int take(int p, const unsigned char *frame, size_t len)
{
    if (len < tsi_at + 4 || frame[job_at] != job) {
        ignored++;
        return -1;
    }
    uint32_t tsi;
    memcpy(&tsi, frame + tsi_at, sizeof tsi);
    tsi = ntohl(tsi);
    int slot = (int)(tsi % (uint32_t)window);
    uint32_t bit = 1u << p;
    if (tsi != tsi_of(slot) || !(missing[slot] & bit)) {
        ignored++; /* a duplicate, or a RESULT of an earlier round */
        return -1;
    }
    missing[slot] &= ~bit;
    results++;
    if (missing[slot])
        return -1;
    rounds++;
    rnd[slot]++;
    return slot;
}

static int open_port(int port, const char *iface)
{
    /* Protocol 0 until bound: the socket receives nothing from other interfaces in between. ETH_P_IP, not
     * ETH_P_ALL: the kernel hands our own transmissions only to ETH_P_ALL taps. */
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0)
        system_error("AF_PACKET socket (root?) for", iface);
    int size = BUFFER_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    unsigned index = if_nametoindex(iface);
    if (index == 0)
        system_error("interface", iface);
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)index};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        system_error("bind to", iface);
    port_addr[port] = addr;
    return fd;
}

static void load_frames(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        system_error("frames file", path);
    struct stat st;
    if (fstat(fileno(file), &st) < 0)
        system_error("frames file", path);
    size_t count = (size_t)nports * (size_t)window * 2;
    if (st.st_size == 0 || (size_t)st.st_size % count != 0)
        usage_error("frames file size is not a multiple of ports x window x 2 frames", path);
    frame_size = (size_t)st.st_size / count;
    if (frame_size < tsi_at + 4 || frame_size <= job_at || frame_size > RECV_BYTES)
        usage_error("frame size does not hold the tsi and job offsets", path);
    frames = malloc((size_t)st.st_size);
    if (frames == NULL || fread(frames, 1, (size_t)st.st_size, file) != (size_t)st.st_size)
        system_error("reading frames file", path);
    fclose(file);
}

static void parse_rounds(const char *text)
{
    const char *p = text;
    for (int slot = 0; slot < window; slot++) {
        char *end;
        errno = 0;
        rnd[slot] = strtoull(p, &end, 10);
        if (end == p || errno || (*end != (slot + 1 < window ? ',' : 0)))
            usage_error("--rounds needs one round per slot, comma-separated", text);
        p = end + 1;
    }
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"frames", required_argument, 0, 'f'},  {"window", required_argument, 0, 'w'},
        {"tsi-at", required_argument, 0, 't'},  {"job-at", required_argument, 0, 'j'},
        {"job", required_argument, 0, 'J'},     {"seconds", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'W'},  {"retransmit", required_argument, 0, 'r'},
        {"drain", required_argument, 0, 'd'},   {"rounds", required_argument, 0, 'R'},
        {0, 0, 0, 0},
    };
    const char *frames_path = NULL, *rounds_text = NULL;
    double seconds = -1, warmup = 0, retransmit = 0.5, drain = 2.0;
    int have_tsi = 0, have_job_at = 0, have_job = 0;
    for (int c; (c = getopt_long(argc, argv, "", options, NULL)) != -1;) {
        switch (c) {
        case 'f': frames_path = optarg; break;
        case 'w': window = (int)count_arg("--window", optarg, MAX_WINDOW); break;
        case 't': tsi_at = count_arg("--tsi-at", optarg, RECV_BYTES), have_tsi = 1; break;
        case 'j': job_at = count_arg("--job-at", optarg, RECV_BYTES), have_job_at = 1; break;
        case 'J': job = (unsigned)count_arg("--job", optarg, 255), have_job = 1; break;
        case 's': seconds = seconds_arg("--seconds", optarg); break;
        case 'W': warmup = seconds_arg("--warmup", optarg); break;
        case 'r': retransmit = seconds_arg("--retransmit", optarg); break;
        case 'd': drain = seconds_arg("--drain", optarg); break;
        case 'R': rounds_text = optarg; break;
        default: usage_error("unknown option; see the comment at the top of bench/c_generator.c", NULL);
        }
    }
    nports = argc - optind;
    if (!frames_path || window < 1 || !have_tsi || !have_job_at || !have_job || seconds <= 0 || !rounds_text)
        usage_error("needs --frames, --window, --tsi-at, --job-at, --job, --seconds and --rounds", NULL);
    if (nports < 1 || nports > MAX_PORTS)
        usage_error("needs 1 to 32 interfaces after the options", NULL);
    if (retransmit <= 0)
        usage_error("--retransmit must be positive", NULL);
    rnd = calloc((size_t)window, sizeof *rnd);
    missing = calloc((size_t)window, sizeof *missing);
    sent_at = calloc((size_t)window, sizeof *sent_at);
    if (!rnd || !missing || !sent_at)
        system_error("allocating", "slot state");
    parse_rounds(rounds_text);
    load_frames(frames_path);
    struct pollfd pfds[MAX_PORTS];
    for (int p = 0; p < nports; p++) {
        fds[p] = open_port(p, argv[optind + p]);
        pfds[p] = (struct pollfd){.fd = fds[p], .events = POLLIN};
    }
    send_fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: it receives nothing */
    int size = BUFFER_BYTES;
    if (send_fd < 0 || setsockopt(send_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size) < 0)
        system_error("AF_PACKET socket", "for sending");
    queue = calloc((size_t)window * (size_t)nports, sizeof *queue);
    queue_iov = calloc((size_t)window * (size_t)nports, sizeof *queue_iov);
    if (!queue || !queue_iov)
        system_error("allocating", "send queue");
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){inbuf[i], RECV_BYTES};
        in[i].msg_hdr = (struct msghdr){.msg_iov = &in_iov[i], .msg_iovlen = 1};
    }
    for (int p = 0; p < nports; p++) /* late answers of an earlier run */
        for (int n; (n = recvmmsg(fds[p], in, BATCH, MSG_DONTWAIT, NULL)) > 0;)
            ignored += (uint64_t)n;

    double t0 = now(), t_start = t0 + warmup, t_stop = t_start + seconds, drain_end = 0, next_scan = t0;
    double cpu_start = 0, m_seconds = 0, m_cpu = 0;
    uint64_t m_results = 0, m_rounds = 0;
    int issuing = 1, counting = 0;
    for (int slot = 0; slot < window; slot++)
        start_round(slot, t0);
    flush();
    for (;;) {
        double t = now();
        if (!counting && issuing && t >= t_start) {
            counting = 1;
            results = rounds = 0;
            printf("counting\n");
            fflush(stdout);
            cpu_start = cpu_now();
        }
        if (issuing && t >= t_stop) {
            m_cpu = cpu_now() - cpu_start;
            issuing = counting = 0;
            m_results = results, m_rounds = rounds, m_seconds = t - t_start;
            drain_end = t + drain;
            printf("stopped\n");
            fflush(stdout);
        }
        if (!issuing) {
            int any = 0;
            for (int slot = 0; slot < window && !any; slot++)
                any = missing[slot] != 0;
            if (!any || t >= drain_end)
                break;
        }
        /* Sleep until a port has frames (spinning would take the CPU of a target on the same cores), then take
         * a burst from each port that has. */
        if (poll(pfds, (nfds_t)nports, 20) > 0) {
            for (int p = 0; p < nports; p++) {
                if (!(pfds[p].revents & POLLIN))
                    continue;
                int n = recvmmsg(fds[p], in, BATCH, MSG_DONTWAIT, NULL);
                for (int i = 0; i < n; i++) {
                    int slot = take(p, inbuf[i], in[i].msg_len);
                    if (slot >= 0 && issuing)
                        start_round(slot, t);
                }
            }
            flush();
        }
        if (t >= next_scan) {
            next_scan = t + retransmit / 5;
            for (int slot = 0; slot < window; slot++) {
                if (!missing[slot] || t - sent_at[slot] < retransmit)
                    continue;
                for (int p = 0; p < nports; p++)
                    if (missing[slot] & (1u << p)) {
                        queue_update(p, slot);
                        resent++;
                    }
                sent_at[slot] = t;
            }
            flush();
        }
    }
    uint64_t unanswered = 0;
    for (int slot = 0; slot < window; slot++)
        unanswered += (uint64_t)__builtin_popcount(missing[slot]);
    printf("result results=%llu rounds=%llu seconds=%.6f sent=%llu resent=%llu unanswered=%llu ignored=%llu "
           "cpu=%.6f next_rounds=",
           (unsigned long long)m_results, (unsigned long long)m_rounds, m_seconds, (unsigned long long)sent,
           (unsigned long long)resent, (unsigned long long)unanswered, (unsigned long long)ignored, m_cpu);
    for (int slot = 0; slot < window; slot++)
        printf("%s%llu", slot ? "," : "", (unsigned long long)rnd[slot]);
    printf("\n");
    return 0;
}
