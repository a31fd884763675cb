# pci-nic: QEMU's e1000e (00:04.0) passed through to lwdom, which drives
# it itself (passthrough::e1000e, MSI-X, smoltcp as 10.0.12.2/24). dom0's
# e1000 (00:05.0, MAC 52:54:00:12:34:01) is on the same QEMU hub; this
# script gives it 10.0.12.1/24, pings the guest 100 times (no loss
# allowed) and runs lab-nicheck, which checks a UDP echo of every payload
# size from 1 to 1472 bytes. Then it writes data/pcinic-done and the guest
# reports its link, MAC, MSI-X vectors and frame counts (the driver's and
# the device's) and powers off.
. /lab/lib.sh
G=lwdom-pci-nic
BDF=00:04.0
DOM0_MAC=52:54:00:12:34:01
GUEST_IP=10.0.12.2

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
ip addr add 10.0.12.1/24 dev $IF 2>/dev/null
ip link set $IF up || fail "cannot bring up dom0's $IF"
echo "dom0's e1000: $IF ($DOM0_MAC), 10.0.12.1/24"

before=$(xl dmesg | wc -l)
start_pci_guest $G $BDF
H=/local/domain/$DOMID
xl pci-list $G

# guest_gone: the guest has shut down (or xl's monitor ended).
guest_gone() {
    grep -q "has shut down, reason code" /tmp/$G.xl 2>/dev/null || ! kill -0 $XL_PID 2>/dev/null
}

# guest_failed DETAIL: ends the scenario, with the guest's own verdict if
# it wrote one.
guest_failed() {
    xenstore-write $H/data/pcinic-done "failed: $*" 2>/dev/null
    sleep 2
    res=$(xenstore-read $H/data/pcinic-result 2>/dev/null) || res="(no data/pcinic-result from the guest)"
    echo "guest result: $res"
    echo "dom0's $IF: $(ip -s link show $IF | tr -s ' ' | tr '\n' '/')"
    xl dmesg | tail -n +$((before + 1)) | grep -e "VT-D" -e "DMAR" -e "d$DOMID" | tail -n 20
    xl destroy $G 2>/dev/null
    fail "$*; guest: $res"
}

# Wait for the guest's smoltcp to be up.
end=$(( $(date +%s) + 240 ))
stage=""
while [ "$stage" != ready ]; do
    guest_gone && guest_failed "the guest ended before its network was up"
    [ $(date +%s) -gt $end ] && guest_failed "the guest's network was not up within 240 s"
    sleep 0.2
    stage=$(xenstore-read $H/data/pcinic-stage 2>/dev/null)
done
echo "LAB-STAGE pci-nic: the guest's smoltcp is up on the e1000e; ping" > /dev/console
echo "dom0's $IF: carrier $(cat /sys/class/net/$IF/carrier 2>/dev/null), speed $(cat /sys/class/net/$IF/speed 2>/dev/null) Mb/s"

echo "--- ping ---"
busybox ping -c 100 -i 0.2 -W 5 $GUEST_IP > /tmp/pci-nic-ping.out 2>&1
tail -n 3 /tmp/pci-nic-ping.out
ping_sum=$(grep "packets transmitted" /tmp/pci-nic-ping.out)
ping_rtt=$(grep "round-trip" /tmp/pci-nic-ping.out)
case "$ping_sum" in
    "100 packets transmitted, 100 packets received, 0% packet loss") ;;
    *) guest_failed "dom0's ping -c 100: ${ping_sum:-$(tail -n 1 /tmp/pci-nic-ping.out)}" ;;
esac

echo "LAB-STAGE pci-nic: ping: $ping_sum; UDP echo" > /dev/console
echo "--- UDP echo ---"
udp=$(/lab/bin/lab-nicheck udp)
rc=$?
echo "$udp"
[ $rc -eq 0 ] || guest_failed "${udp#lab-nicheck: }"

xenstore-write $H/data/pcinic-done done
wait_shutdown $G 120
res=$(xenstore-read $H/data/pcinic-result 2>/dev/null) || res="(no data/pcinic-result from the guest)"
echo "guest result: $res"
echo "dom0's $IF (bytes packets errors dropped missed mcast): RX $(ip -s link show $IF | sed -n '4p' | tr -s ' '); TX $(ip -s link show $IF | sed -n '6p' | tr -s ' ')"
echo "--- xl dmesg since the guest started: IOMMU and the guest's domain ---"
xl dmesg | tail -n +$((before + 1)) | grep -e "VT-D" -e "DMAR" -e "d$DOMID" -e "$BDF" | tail -n 20
end_guest $G
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
verdict PASS "${res#ok }; dom0: ping: $ping_sum, $ping_rtt; ${udp#lab-nicheck: }"
