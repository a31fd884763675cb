# boot: lwdom boots, writes to its console, reads its domid and name from
# xenstore, writes a result key and powers off.
. /lab/lib.sh
G=lwdom-boot
start_guest $G
v=$(xs_wait /local/domain/$DOMID/data/result 30) || { xl destroy $G; fail "no data/result key from the guest within 30 s"; }
echo "data/result = $v"
wait_shutdown $G 30
[ "$REASON" = "0" ] || fail "guest shut down with reason '${REASON:-none}', expected 0 (poweroff)"
expect="domid=$DOMID name=$G"
[ "$v" = "ok $expect" ] || fail "data/result is '$v', expected 'ok $expect'"
log=/var/log/xen/console/guest-$G.log
grep -q "lwdom: hello from domain $DOMID ($G)" $log || fail "the console line 'lwdom: hello from domain $DOMID ($G)' is missing"
verdict PASS "console, xenstore ($expect) and poweroff checked"
