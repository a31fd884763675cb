# pci-edu: QEMU's edu (00:03.0) passed through to lwdom. The guest finds it
# through pcifront, checks identification and factorials with MSI, takes
# MSIs it raises, DMAs patterns both ways below the edu's 28-bit mask, and
# then DMAs from a machine page that is not its own: this script checks
# that Xen's IOMMU refused that read (the VT-d fault in `xl dmesg`, at the
# address the guest wrote to data/pci-stray) and that the guest carried on
# and powered off.
. /lab/lib.sh
G=lwdom-pci-edu
BDF=00:03.0
# xl dmesg lines before the guest, so that only its faults are looked at.
before=$(xl dmesg | wc -l)
start_pci_guest $G $BDF
H=/local/domain/$DOMID
xl pci-list $G
wait_shutdown $G 240
res=$(xenstore-read $H/data/pci-result 2>/dev/null) || res="(no data/pci-result from the guest)"
stray=$(xenstore-read $H/data/pci-stray 2>/dev/null)
echo "guest result: $res"
echo "stray DMA address: ${stray:-none}"
xl dmesg | tail -n +$((before + 1)) > /tmp/pci-edu.dmesg
echo "--- xl dmesg since the guest started: IOMMU and the guest's domain ---"
grep -e "VT-D" -e "DMAR" -e "d$DOMID" -e "$BDF" /tmp/pci-edu.dmesg | tail -n 40
end_guest $G
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
[ -n "$stray" ] || fail "the guest wrote no data/pci-stray (the stray DMA's address)"
fault=$(grep -m 1 "DMAR:\[DMA Read\] Request device \[0000:$BDF\] fault addr $stray\b" /tmp/pci-edu.dmesg) \
    || fail "no VT-d fault for the edu's stray read of $stray in xl dmesg: the IOMMU did not refuse it (or did not report it)"
reason=$(grep -A1 -F "$fault" /tmp/pci-edu.dmesg | tail -n 1 | sed 's/.*DMAR: *//')
echo "IOMMU fault: $fault / $reason"
verdict PASS "${res#ok }; dom0: xl dmesg has the IOMMU's refusal of the read at $stray ($reason)"
