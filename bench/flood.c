/*
 * A paced, bounded flood of identical IPv6/UDP frames onto one interface, for bench/capture_flood.py.
 *
 *     flood IFNAME DST_MAC FRAME_BYTES RATE_PPS COUNT MAX_SECONDS [BATCH]
 *
 * Frames are written with an AF_PACKET socket (qdisc bypassed) in batches of BATCH through
 * sendmmsg(2). They carry fd00::1 -> fd00::ff, UDP port 33333: on a private veth link the receiving
 * namespace (no forwarding) drops them silently. Pacing follows CLOCK_MONOTONIC: packet i is due at
 * i / RATE_PPS seconds after the start; a sender that falls behind catches up in whole batches, one
 * that is ahead sleeps (long gaps) or spins (short ones). RATE_PPS 0 means as fast as possible.
 * The flood ends after COUNT frames or MAX_SECONDS, whichever comes first, and prints one JSON line:
 *
 *     {"sent": N, "elapsed_ns": T, "rate_pps": R, "send_errors": E}
 *
 * Exit status 0 after a flood (even a short one: read "sent"), 1 on a setup or socket error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIN_FRAME_BYTES 62   /* Ethernet 14 + IPv6 40 + UDP 8 */
#define MAX_FRAME_BYTES 1514 /* a 1500-byte MTU */
#define MAX_BATCH 1024
#define SPIN_BELOW_NS 50000L  /* gaps shorter than 50 us are spun, longer ones slept */
#define SLEEP_MARGIN_NS 20000L /* wake 20 us early: nanosleep overshoots */
#define UDP_PORT 33333
#define NS_PER_S 1000000000LL

static const uint8_t SRC_V6[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
static const uint8_t DST_V6[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int parse_mac(const char *text, uint8_t mac[6]) {
    unsigned int b[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) return -1;
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)b[i];
    return 0;
}

static uint16_t udp_checksum(const uint8_t *udp, size_t length) {
    uint32_t sum = 0;
    for (int i = 0; i < 16; i += 2) sum += (SRC_V6[i] << 8 | SRC_V6[i + 1]) + (DST_V6[i] << 8 | DST_V6[i + 1]);
    sum += (uint32_t)length + 17; /* pseudo-header: upper-layer length and next header */
    for (size_t i = 0; i + 1 < length; i += 2) sum += udp[i] << 8 | udp[i + 1];
    if (length % 2) sum += udp[length - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    uint16_t result = (uint16_t)~sum;
    return result ? result : 0xffff;
}

static void build_frame(uint8_t *frame, size_t bytes, const uint8_t dst[6], const uint8_t src[6]) {
    size_t udp_length = bytes - 14 - 40;
    memset(frame, 0, bytes);
    memcpy(frame, dst, 6);
    memcpy(frame + 6, src, 6);
    frame[12] = 0x86, frame[13] = 0xdd;
    uint8_t *ip6 = frame + 14;
    ip6[0] = 0x60;
    ip6[4] = (uint8_t)(udp_length >> 8), ip6[5] = (uint8_t)udp_length;
    ip6[6] = 17, ip6[7] = 64; /* next header UDP, hop limit */
    memcpy(ip6 + 8, SRC_V6, 16);
    memcpy(ip6 + 24, DST_V6, 16);
    uint8_t *udp = ip6 + 40;
    udp[0] = UDP_PORT >> 8, udp[1] = UDP_PORT & 0xff, udp[2] = UDP_PORT >> 8, udp[3] = UDP_PORT & 0xff;
    udp[4] = (uint8_t)(udp_length >> 8), udp[5] = (uint8_t)udp_length;
    uint16_t sum = udp_checksum(udp, udp_length);
    udp[6] = (uint8_t)(sum >> 8), udp[7] = (uint8_t)sum;
}

static int open_socket(const char *ifname, uint8_t src_mac[6]) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: this socket receives nothing */
    if (fd < 0) return perror("socket(AF_PACKET)"), -1;
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) return perror(ifname), close(fd), -1;
    memcpy(src_mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return perror("bind"), close(fd), -1;
    int one = 1, sndbuf = 4 << 20;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one); /* best effort */
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    return fd;
}

/* Waits until CLOCK_MONOTONIC reaches `due_ns`: sleeps through long gaps, spins through short ones. */
static void wait_until(int64_t due_ns) {
    int64_t gap = due_ns - now_ns();
    if (gap > SPIN_BELOW_NS) {
        int64_t sleep_ns = gap - SLEEP_MARGIN_NS;
        struct timespec ts = {(time_t)(sleep_ns / NS_PER_S), (long)(sleep_ns % NS_PER_S)};
        nanosleep(&ts, NULL);
    }
    while (now_ns() < due_ns) __builtin_ia32_pause();
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 8) {
        fprintf(stderr, "usage: %s IFNAME DST_MAC FRAME_BYTES RATE_PPS COUNT MAX_SECONDS [BATCH]\n", argv[0]);
        return 1;
    }
    uint8_t dst[6], src[6];
    long bytes = strtol(argv[3], NULL, 10);
    double rate = strtod(argv[4], NULL), max_seconds = strtod(argv[6], NULL);
    long long count = strtoll(argv[5], NULL, 10);
    long batch = argc == 8 ? strtol(argv[7], NULL, 10) : 32;
    if (parse_mac(argv[2], dst) || bytes < MIN_FRAME_BYTES || bytes > MAX_FRAME_BYTES || rate < 0 ||
        count < 0 || max_seconds <= 0 || max_seconds > 3600 || batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "flood: bad argument (frame %d..%d bytes, batch 1..%d, max 3600 s)\n",
                MIN_FRAME_BYTES, MAX_FRAME_BYTES, MAX_BATCH);
        return 1;
    }
    int fd = open_socket(argv[1], src);
    if (fd < 0) return 1;
    static uint8_t frame[MAX_FRAME_BYTES];
    build_frame(frame, (size_t)bytes, dst, src);
    static struct iovec iov;
    static struct mmsghdr msgs[MAX_BATCH];
    iov.iov_base = frame, iov.iov_len = (size_t)bytes;
    for (int i = 0; i < batch; i++) msgs[i].msg_hdr.msg_iov = &iov, msgs[i].msg_hdr.msg_iovlen = 1;

    long long sent = 0, errors = 0;
    int64_t start = now_ns(), limit = start + (int64_t)(max_seconds * NS_PER_S), now = start;
    while (sent < count && (now = now_ns()) < limit) {
        long long due = rate > 0 ? (long long)((double)(now - start) * rate / NS_PER_S) + 1 : count;
        if (due > count) due = count;
        if (due <= sent) {
            wait_until(start + (int64_t)((double)sent * NS_PER_S / rate));
            continue;
        }
        long long want = due - sent < batch ? due - sent : batch;
        int n = sendmmsg(fd, msgs, (unsigned int)want, 0);
        if (n < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) return perror("sendmmsg"), 1;
            errors++;
            continue;
        }
        sent += n;
    }
    int64_t elapsed = now_ns() - start;
    printf("{\"sent\": %lld, \"elapsed_ns\": %lld, \"rate_pps\": %.0f, \"send_errors\": %lld}\n", sent,
           (long long)elapsed, elapsed > 0 ? (double)sent * NS_PER_S / (double)elapsed : 0.0, errors);
    close(fd);
    return 0;
}
