# grant: lwdom grants two pages to dom0; lab-grant maps them (gntdev),
# checks the pattern, replies; lwdom checks the reply and that ending access
# fails while dom0 maps a page and succeeds once it unmapped.
. /lab/lib.sh
G=lwdom-grant
start_guest $G
H=/local/domain/$DOMID
refs=$(xs_wait $H/data/grant-refs 30) || { xl destroy $G; fail "the guest published no grant refs within 30 s"; }
port=$(xs_wait $H/data/grant-port 5) || { xl destroy $G; fail "the guest published no event channel port"; }
echo "refs: $refs, port: $port"
/lab/bin/lab-grant $DOMID $refs $port
rc=$?
wait_shutdown $G 60
res=$(xenstore-read $H/data/grant-result 2>/dev/null) || res="(no data/grant-result from the guest)"
echo "guest result: $res"
end_guest $G
[ $rc -eq 0 ] || fail "lab-grant failed (status $rc); guest says: $res"
case "$res" in
    ok*) ;;
    *) fail "guest: $res" ;;
esac
[ "$REASON" = "0" ] || fail "guest shut down with reason $REASON_NAME, expected poweroff"
verdict PASS "${res#ok }"
