# blk: lwdom's blkfront against Linux's xen-blkback on loop devices over
# files in dom0's tmpfs: a 64 MiB read-write disk (xvda) and a 4 MiB
# read-only one (xvdb, filled with a pattern the guest checks). The guest
# writes, flushes, reads back and checks the whole disk, discards a range,
# checks the read-only disk; then, while it rewrites the disk, this script
# unbinds blkback from xvda's backend device and binds it again, and the
# guest checks that every write landed; then lab-blkcheck checks the
# backing file itself.
. /lab/lib.sh
G=lwdom-blk
# Two queues per device (dom0 has one vCPU, blkback's default), so that
# the guest's multi-queue keys (queue-N/) are read by blkback.
modprobe xen-blkback max_queues=2 || fail "modprobe xen-blkback failed"
echo 2 > /sys/module/xen_blkback/parameters/max_queues || fail "cannot set xen_blkback's max_queues"
modprobe loop || fail "modprobe loop failed"
truncate -s 64M /tmp/blk-rw.img || fail "cannot create the 64 MiB backing file"
# 4 MiB of 16-byte lines `lwdom-ro-disk-0\n`.
yes lwdom-ro-disk-0 | head -c 4194304 > /tmp/blk-ro.img || fail "cannot create the read-only disk's file"
RW=$(losetup -f --show /tmp/blk-rw.img) || fail "losetup of the read-write disk failed"
RO=$(losetup -f --show -r /tmp/blk-ro.img) || fail "losetup of the read-only disk failed"
echo "read-write disk: $RW, read-only disk: $RO"
# Linux's loop driver discards by punching a hole in its backing file; a
# hole in a tmpfs file reads as zeroes. blkif has no key that says so: the
# guest learns it from this key.
zeroes=0
dmax=$(cat /sys/block/${RW#/dev/}/queue/discard_max_bytes 2>/dev/null)
[ "${dmax:-0}" -gt 0 ] && zeroes=1
echo "$RW: discard_max_bytes ${dmax:-unknown}, discarded ranges read as zeroes: $zeroes"

start_guest $G "disk = [ 'phy:$RW,xvda,w,script=/lab/block-min', 'phy:$RO,xvdb,r,script=/lab/block-min' ]"
H=/local/domain/$DOMID
BE=/local/domain/0/backend/vbd/$DOMID/51712
xenstore-write $H/data/blk-discard-zeroes $zeroes

# guest_gone: the guest has shut down (or xl's monitor ended).
guest_gone() {
    grep -q "has shut down, reason code" /tmp/$G.xl 2>/dev/null || ! kill -0 $XL_PID 2>/dev/null
}

# The rebind, once the guest says it is rewriting the disk.
stage=""
end=$(( $(date +%s) + 600 ))
while [ "$stage" != rewrite ]; do
    guest_gone && break
    [ $(date +%s) -gt $end ] && { xl destroy $G; fail "the guest did not reach the rewrite within 600 s"; }
    sleep 0.2
    stage=$(xenstore-read $H/data/blk-stage 2>/dev/null)
done
if [ "$stage" = rewrite ]; then
    DRV=/sys/bus/xen-backend/drivers/vbd
    DEV=vbd-$DOMID-51712
    echo "backend before the unbind: state $(xenstore-read $BE/state), $(cat /sys/bus/xen-backend/devices/$DEV/statistics/wr_sect 2>/dev/null) sectors written"
    if echo $DEV > $DRV/unbind; then
        xenstore-write $H/data/blk-rebind unbound
        echo "unbound $DEV from blkback: backend state $(xenstore-read $BE/state)"
        sleep 1
        if echo $DEV > $DRV/bind; then
            end=$(( $(date +%s) + 30 ))
            while [ "$(xenstore-read $BE/state 2>/dev/null)" != 4 ] && [ $(date +%s) -le $end ]; do sleep 0.2; done
            st=$(xenstore-read $BE/state 2>/dev/null)
            echo "bound $DEV to blkback again: backend state $st"
            if [ "$st" = 4 ]; then
                xenstore-write $H/data/blk-rebind rebound
            else
                xenstore-write $H/data/blk-rebind "failed: the backend is in state $st 30 s after the bind"
            fi
        else
            xenstore-write $H/data/blk-rebind "failed: bind of $DEV refused"
        fi
    else
        xenstore-write $H/data/blk-rebind "failed: unbind of $DEV refused"
    fi
fi

wait_shutdown $G 600
res=$(xenstore-read $H/data/blk-result 2>/dev/null) || res="(no data/blk-result from the guest)"
echo "guest result: $res"
echo "--- xenstore of the backends ---"
xenstore-ls -f /local/domain/0/backend/vbd/$DOMID 2>/dev/null | grep -v -e '/params' -e '/physical-device-path'
echo "--- dom0 kernel messages ---"
dmesg | grep -i -E "blkback|blkif|vbd|loop" | tail -n 40
end_guest $G
case "$res" in
    ok*) ;;
    *) losetup -d $RW $RO 2>/dev/null; fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || { losetup -d $RW $RO 2>/dev/null; fail "guest shut down with reason $REASON_NAME, expected poweroff"; }
# The disk as dom0 sees it: the rewrite (pass 2) in every sector of the
# backing file.
check=$(/lab/bin/lab-blkcheck /tmp/blk-rw.img 2)
rc=$?
echo "$check"
losetup -d $RW $RO 2>/dev/null
[ $rc -eq 0 ] || fail "${check#lab-blkcheck: }"
verdict PASS "${res#ok }; dom0: ${check#lab-blkcheck: }"
