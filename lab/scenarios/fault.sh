# fault: a negative control; runs the boot checks on a guest that page-faults, so it must FAIL.
. /lab/lib.sh
G=lwdom-fault
start_guest $G
wait_shutdown $G 30
expect_poweroff $G
v=$(xenstore-read /local/domain/$DOMID/data/result 2>/dev/null) || { end_guest $G; fail "no data/result key from the guest"; }
echo "data/result = $v"
end_guest $G
expect="domid=$DOMID name=$G"
[ "$v" = "ok $expect" ] || fail "data/result is '$v', expected 'ok $expect'"
log=/var/log/xen/console/guest-$G.log
grep -q "lwdom: hello from domain $DOMID ($G)" $log || fail "the console line 'lwdom: hello from domain $DOMID ($G)' is missing"
verdict PASS "console, xenstore ($expect) and poweroff checked"
