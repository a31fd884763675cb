# boot: lwdom boots, writes to its console, reads its domid and name from
# xenstore, checks its clock and block_any against Xen (the guest fails
# otherwise), writes a result key and powers off.
. /lab/lib.sh
G=lwdom-boot
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
seam=$(grep -o "seam checked: .*" $log) || fail "the console line 'lwdom: seam checked: ...' (clock, block_any) is missing"
echo "$seam"
verdict PASS "console, xenstore ($expect), clock and block_any, poweroff checked"
