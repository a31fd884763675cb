# net: lwdom's netfront and smoltcp against Linux's xen-netback, over a
# vif in dom0's bridge xenbr0 (10.0.9.1/24; the guest is 10.0.9.2), with
# the vif-min hotplug script. dom0 pings the guest 100 times; lab-netcheck
# checks a UDP echo of every payload size from 1 to 1472 bytes and 16 MiB
# of TCP each way (checksummed at both ends); then, while a third 16 MiB
# stream runs from the guest, this script unbinds netback from the vif's
# backend device and binds it again (putting the new interface in the
# bridge as the hotplug script does), and the stream must complete.
. /lab/lib.sh
G=lwdom-net
GUEST_IP=10.0.9.2
# Two queues (dom0 has one vCPU, netback's default), so that the guest's
# multi-queue keys (queue-N/) are read by netback.
modprobe xen-netback max_queues=2 || fail "modprobe xen-netback failed"
echo 2 > /sys/module/xen_netback/parameters/max_queues || fail "cannot set xen_netback's max_queues"
modprobe bridge || fail "modprobe bridge failed"
ip link show xenbr0 >/dev/null 2>&1 || ip link add xenbr0 type bridge forward_delay 0 || fail "cannot create the bridge xenbr0"
ip addr add 10.0.9.1/24 dev xenbr0 2>/dev/null
ip link set xenbr0 up || fail "cannot bring up xenbr0"

start_guest $G "vif = [ 'bridge=xenbr0,script=/lab/vif-min' ]"
H=/local/domain/$DOMID
BE=/local/domain/0/backend/vif/$DOMID/0
VIF=vif$DOMID.0

# evstats: netback's event counters for the vif (the xenbus device's
# sysfs: events received, those that brought no work (spurious: Linux then
# delays the channel's next events, XSA-391), jiffies of such delays).
evstats() {
    d=/sys/bus/xen-backend/devices/vif-$DOMID-0/xenbus
    echo "events $(cat $d/events 2>/dev/null), spurious $(cat $d/spurious_events 2>/dev/null), eoi delayed $(cat $d/jiffies_eoi_delayed 2>/dev/null) jiffies"
}

# progress TEXT: a line on dom0's console (xtask shows LAB-STAGE lines as
# they come; the rest of this script's output comes with the verdict).
progress() {
    echo "LAB-STAGE net: $*" > /dev/console
    echo "$*"
}

# guest_gone: the guest has shut down (or xl's monitor ended).
guest_gone() {
    grep -q "has shut down, reason code" /tmp/$G.xl 2>/dev/null || ! kill -0 $XL_PID 2>/dev/null
}

# guest_failed DETAIL: ends the scenario, with the guest's own verdict if
# it wrote one.
guest_failed() {
    res=$(xenstore-read $H/data/net-result 2>/dev/null) || res="(no data/net-result from the guest)"
    echo "guest result: $res"
    dmesg | grep -i -E "vif|netback|xenbr0" | tail -n 20
    xl destroy $G 2>/dev/null
    fail "$*; guest: $res"
}

# Wait for the guest's smoltcp to be up.
end=$(( $(date +%s) + 300 ))
stage=""
while [ "$stage" != ready ]; do
    guest_gone && guest_failed "the guest ended before its network was up"
    [ $(date +%s) -gt $end ] && { xl destroy $G; fail "the guest's network was not up within 300 s"; }
    sleep 0.2
    stage=$(xenstore-read $H/data/net-stage 2>/dev/null)
done
echo "--- the vif's backend and frontend in xenstore ---"
xenstore-ls -f $BE 2>/dev/null
xenstore-ls -f $H/device/vif/0 2>/dev/null
ip -d link show $VIF 2>&1 | head -n 3

progress "the guest's smoltcp is up; ping"
echo "--- ping ---"
busybox ping -c 100 -i 0.2 -W 5 $GUEST_IP > /tmp/net-ping.out 2>&1
tail -n 3 /tmp/net-ping.out
ping_sum=$(grep "packets transmitted" /tmp/net-ping.out)
ping_rtt=$(grep "round-trip" /tmp/net-ping.out)
case "$ping_sum" in
    "100 packets transmitted, 100 packets received, 0% packet loss") ;;
    *) guest_failed "dom0's ping -c 100: ${ping_sum:-$(tail -n 1 /tmp/net-ping.out)}" ;;
esac

progress "ping: $ping_sum; netback's $(evstats); UDP echo"
echo "--- UDP echo ---"
udp=$(/lab/bin/lab-netcheck udp)
rc=$?
echo "$udp"
[ $rc -eq 0 ] || guest_failed "${udp#lab-netcheck: }"

progress "${udp#lab-netcheck: }; netback's $(evstats); TCP both ways"
echo "--- TCP both ways ---"
tcp=$(/lab/bin/lab-netcheck tcp)
rc=$?
echo "$tcp"
[ $rc -eq 0 ] || guest_failed "$(echo "$tcp" | tail -n 1 | sed 's/^lab-netcheck: //')"
tcp=$(echo "$tcp" | tail -n 1)

progress "TCP done; netback's $(evstats); the rebind stream"
echo "--- TCP from the guest across an unbind and rebind of netback ---"
/lab/bin/lab-netcheck rebind > /tmp/net-rebind.out 2>&1 &
CK=$!
end=$(( $(date +%s) + 300 ))
while [ "$stage" != rebind ]; do
    guest_gone && break
    kill -0 $CK 2>/dev/null || break
    [ $(date +%s) -gt $end ] && { xl destroy $G; fail "the guest's rebind stream did not reach its gate within 300 s"; }
    sleep 0.2
    stage=$(xenstore-read $H/data/net-stage 2>/dev/null)
done
if [ "$stage" = rebind ]; then
    DRV=/sys/bus/xen-backend/drivers/vif
    DEV=vif-$DOMID-0
    echo "backend before the unbind: state $(xenstore-read $BE/state), $VIF: $(ip -s link show $VIF | sed -n '4p;6p' | tr -s ' ' | tr '\n' '/')"
    if echo $DEV > $DRV/unbind; then
        progress "unbound $DEV from netback"
        xenstore-write $H/data/net-rebind unbound
        echo "unbound $DEV from netback: backend state $(xenstore-read $BE/state 2>/dev/null), $VIF $(ip link show $VIF >/dev/null 2>&1 && echo still there || echo gone)"
        sleep 1
        if echo $DEV > $DRV/bind; then
            # netback makes a new interface and waits for hotplug-status.
            end=$(( $(date +%s) + 30 ))
            while ! ip link show $VIF >/dev/null 2>&1 && [ $(date +%s) -le $end ]; do sleep 0.2; done
            XENBUS_PATH=$BE vif=$VIF /lab/vif-min online type_if=vif || echo "vif-min online failed: $(xenstore-read $BE/hotplug-error 2>/dev/null)"
            end=$(( $(date +%s) + 60 ))
            while [ "$(xenstore-read $BE/state 2>/dev/null)" != 4 ] && [ $(date +%s) -le $end ]; do sleep 0.2; done
            st=$(xenstore-read $BE/state 2>/dev/null)
            progress "bound $DEV to netback again: backend state $st, frontend state $(xenstore-read $H/device/vif/0/state 2>/dev/null)"
            if [ "$st" = 4 ]; then
                xenstore-write $H/data/net-rebind rebound
            else
                xenstore-write $H/data/net-rebind "failed: the backend is in state $st 60 s after the bind"
            fi
        else
            xenstore-write $H/data/net-rebind "failed: bind of $DEV refused"
        fi
    else
        xenstore-write $H/data/net-rebind "failed: unbind of $DEV refused"
    fi
fi
wait $CK
rc=$?
rebind=$(cat /tmp/net-rebind.out)
echo "$rebind"

wait_shutdown $G 300
res=$(xenstore-read $H/data/net-result 2>/dev/null) || res="(no data/net-result from the guest)"
echo "guest result: $res"
ev_end=$(evstats)
echo "netback's $ev_end"
echo "--- the vif's backend after the rebind ---"
xenstore-ls -f $BE 2>/dev/null
echo "--- dom0 kernel messages ---"
dmesg | grep -i -E "vif|netback|xenbr0" | tail -n 40
end_guest $G
[ $rc -eq 0 ] || fail "${rebind#lab-netcheck: }; guest: $res"
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
verdict PASS "${res#ok }; dom0: netback's $ev_end; ping: $ping_sum, $ping_rtt; ${udp#lab-netcheck: }; ${tcp#lab-netcheck: }; ${rebind#lab-netcheck: }"
