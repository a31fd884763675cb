# rdma: RoCE v2 between lwdom, which drives the passed-through e1000e
# (00:04.0) itself, and dom0's Soft-RoCE (rdma_rxe) on its e1000 (00:05.0,
# MAC 52:54:00:12:34:01) on the same QEMU hub, with rdma-core's and
# perftest's own tools on dom0's side:
#   1. ibv_rc_pingpong -c, dom0 the client, the guest the server;
#   2. ibv_rc_pingpong -c, dom0 the server (it checks the guest's buffer);
#   3. ib_send_lat, dom0 the server, the guest the client;
#   4. ib_write_lat, dom0 the client, the guest the server.
# The guest writes data/rdma-stage as it gets to each step (listening, or
# about to connect) and checks every payload it receives; this script
# checks each tool's exit status and output, prints them, and writes
# data/rdma-done.
. /lab/lib.sh
G=lwdom-rdma
BDF=00:04.0
DOM0_MAC=52:54:00:12:34:01
DOM0_IP=10.0.12.1
GUEST_IP=10.0.12.2
PP_ITERS=20
PERF_ITERS=50
TOOL_TIMEOUT=240

# dom0's e1000.
modprobe e1000 || fail "modprobe e1000 failed"
IF=""
end=$(( $(date +%s) + 20 ))
while [ -z "$IF" ] && [ $(date +%s) -le $end ]; do
    for d in /sys/class/net/*; do
        [ "$(cat $d/address 2>/dev/null)" = "$DOM0_MAC" ] && IF=${d##*/}
    done
    [ -n "$IF" ] || sleep 0.2
done
[ -n "$IF" ] || fail "dom0 has no interface with the e1000's MAC $DOM0_MAC (is the e1000 at 00:05.0 and its driver loaded?)"
ip addr add $DOM0_IP/24 dev $IF 2>/dev/null
ip link set $IF up || fail "cannot bring up dom0's $IF"

# Soft-RoCE on it, and the RoCE v2 GID of its IPv4 address: one
# ibv_devinfo and one sed per try (every exec is slow under TCG).
modprobe rdma_rxe || fail "modprobe rdma_rxe failed"
modprobe ib_uverbs || fail "modprobe ib_uverbs failed"
# rxe's ICRC uses the crypto API's crc32 (adding the link fails with
# ENOENT without it).
modprobe crc32_generic || fail "modprobe crc32_generic failed"
if ! rdma link show rxe0/1 >/dev/null 2>&1; then
    rdma link add rxe0 type rxe netdev $IF 2>/tmp/rdma-link.err \
        || fail "rdma link add rxe0 type rxe netdev $IF: $(cat /tmp/rdma-link.err)"
fi
GIDX=""
end=$(( $(date +%s) + 30 ))
while [ -z "$GIDX" ] && [ $(date +%s) -le $end ]; do
    ibv_devinfo -v -d rxe0 > /tmp/rxe-devinfo.out 2>&1
    GIDX=$(sed -n 's/.*GID\[ *\([0-9]*\)\]:[[:space:]]*::ffff:10\.0\.12\.1, RoCE v2.*/\1/p' /tmp/rxe-devinfo.out | head -n 1)
    [ -n "$GIDX" ] || sleep 1
done
if [ -z "$GIDX" ]; then
    grep -e "GID" -e "state" -e "mtu" /tmp/rxe-devinfo.out
    fail "rxe0 has no RoCE v2 GID for $DOM0_IP within 30 s (see ibv_devinfo -v above)"
fi
echo "dom0: rxe0 on $IF ($DOM0_MAC, $DOM0_IP/24); RoCE v2 GID index $GIDX"
grep -e "active_mtu" -e "state:" -e "GID\[ *$GIDX\]" /tmp/rxe-devinfo.out | tr -s '\t ' ' '
echo "LAB-STAGE rdma: rxe0 on $IF, RoCE v2 IPv4 GID index $GIDX; starting the guest" > /dev/console

before=$(xl dmesg | wc -l)
start_pci_guest $G $BDF
H=/local/domain/$DOMID

guest_gone() {
    grep -q "has shut down, reason code" /tmp/$G.xl 2>/dev/null || ! kill -0 $XL_PID 2>/dev/null
}

# guest_failed DETAIL: ends the scenario with the guest's verdict if any.
guest_failed() {
    xenstore-write $H/data/rdma-done "failed: $*" 2>/dev/null
    sleep 3
    res=$(xenstore-read $H/data/rdma-result 2>/dev/null) || res="(no data/rdma-result from the guest)"
    echo "guest result: $res"
    for f in /tmp/rdma-*.out; do echo "--- $f ---"; cat $f; done
    xl destroy $G 2>/dev/null
    fail "$*; guest: $res"
}

# wait_stage VALUE SECONDS: waits for the guest's data/rdma-stage.
wait_stage() {
    end=$(( $(date +%s) + $2 ))
    while [ "$(xenstore-read $H/data/rdma-stage 2>/dev/null)" != "$1" ]; do
        guest_gone && guest_failed "the guest ended before stage $1"
        [ $(date +%s) -gt $end ] && guest_failed "the guest did not reach stage $1 within $2 s (at: $(xenstore-read $H/data/rdma-stage 2>/dev/null))"
        sleep 0.3
    done
}

# run_tool NAME OUT CMD...: runs a tool in the foreground; fails the
# scenario on a non-zero status.
run_tool() {
    name=$1; out=$2; shift 2
    timeout $TOOL_TIMEOUT "$@" > $out 2>&1
    rc=$?
    echo "--- $name: $* (status $rc) ---"
    cat $out
    [ $rc -eq 0 ] || guest_failed "$name exited with status $rc: $(tail -n 2 $out | tr '\n' ' ')"
}

# The summary lines of each tool's report.
pp_summary() { grep "iters in" $1 | head -n 1; }
lat_summary() { sed -n '/t_min\[usec\]/{n;p;}' $1 | tr -s ' \t' ' ' | head -n 1; }

# 1. ibv_rc_pingpong: dom0 the client (the guest listens once its
# smoltcp is up).
wait_stage pp-server 360
echo "LAB-STAGE rdma: the guest listens; ibv_rc_pingpong, dom0 the client" > /dev/console
run_tool "ibv_rc_pingpong (dom0 client)" /tmp/rdma-pp1.out \
    ibv_rc_pingpong -d rxe0 -g $GIDX -n $PP_ITERS -c $GUEST_IP
PP1=$(pp_summary /tmp/rdma-pp1.out)
[ -n "$PP1" ] || guest_failed "ibv_rc_pingpong (dom0 client) printed no result"
echo "LAB-STAGE rdma: ibv_rc_pingpong, dom0 client: $PP1" > /dev/console

# 2. ibv_rc_pingpong: dom0 the server; the guest connects (again until
# the server listens).
wait_stage pp-client 120
run_tool "ibv_rc_pingpong (dom0 server)" /tmp/rdma-pp2.out \
    ibv_rc_pingpong -d rxe0 -g $GIDX -n $PP_ITERS -c
PP2=$(pp_summary /tmp/rdma-pp2.out)
[ -n "$PP2" ] || guest_failed "ibv_rc_pingpong (dom0 server) printed no result"
grep -q "invalid data" /tmp/rdma-pp2.out && guest_failed "ibv_rc_pingpong -c (dom0 server) found invalid data in the guest's messages"
echo "LAB-STAGE rdma: ibv_rc_pingpong, dom0 server (buffer checked): $PP2" > /dev/console

# 3. ib_send_lat: dom0 the server.
wait_stage sl-client 120
run_tool "ib_send_lat (dom0 server)" /tmp/rdma-sl.out \
    ib_send_lat -d rxe0 -x $GIDX -n $PERF_ITERS -F
SL=$(lat_summary /tmp/rdma-sl.out)
[ -n "$SL" ] || guest_failed "ib_send_lat printed no latency line"
echo "LAB-STAGE rdma: ib_send_lat, dom0 server: $SL" > /dev/console

# 4. ib_write_lat: dom0 the client.
wait_stage wl-server 120
run_tool "ib_write_lat (dom0 client)" /tmp/rdma-wl.out \
    ib_write_lat -d rxe0 -x $GIDX -n $PERF_ITERS -F $GUEST_IP
WL=$(lat_summary /tmp/rdma-wl.out)
[ -n "$WL" ] || guest_failed "ib_write_lat printed no latency line"
echo "LAB-STAGE rdma: ib_write_lat, dom0 client: $WL" > /dev/console

wait_stage tests-done 120
xenstore-write $H/data/rdma-done done
wait_shutdown $G 120
res=$(xenstore-read $H/data/rdma-result 2>/dev/null) || res="(no data/rdma-result from the guest)"
echo "guest result: $res"
echo "--- rxe0 counters ---"
grep -H . /sys/class/infiniband/rxe0/ports/1/hw_counters/* 2>/dev/null | sed 's|.*/||' | tr '\n' ' '
echo
echo "--- xl dmesg since the guest started: IOMMU and the guest's domain ---"
xl dmesg | tail -n +$((before + 1)) | grep -e "VT-D" -e "DMAR" -e "d$DOMID" -e "$BDF" | tail -n 20
end_guest $G
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
verdict PASS "dom0: ibv_rc_pingpong client: $PP1; ibv_rc_pingpong server: $PP2; ib_send_lat (#bytes #iters t_min t_max t_typical t_avg t_stdev p99 p99.9 usec):$SL; ib_write_lat:$WL; guest: ${res#ok }"
