# ring: 100 000 round trips between lwdom's FrontRing and lab-ring's
# BackRing over a page granted by lwdom and mapped with gntdev.
. /lab/lib.sh
G=lwdom-ring
start_guest $G
H=/local/domain/$DOMID
ref=$(xs_wait $H/data/ring-ref 30) || { xl destroy $G; fail "the guest published no ring ref within 30 s"; }
port=$(xs_wait $H/data/ring-port 5) || { xl destroy $G; fail "the guest published no event channel port"; }
echo "ring ref: $ref, port: $port"
/lab/bin/lab-ring $DOMID $ref $port
rc=$?
wait_shutdown $G 60
res=$(xenstore-read $H/data/ring-result 2>/dev/null) || res="(no data/ring-result from the guest)"
echo "guest result: $res"
end_guest $G
[ $rc -eq 0 ] || fail "lab-ring failed (status $rc); guest says: $res"
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
verdict PASS "${res#ok }"
