# Helpers for the lab's scenario scripts (sourced).
export PATH=/usr/lib/xen-4.17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# verdict PASS|FAIL detail...: records the scenario's verdict (first wins).
verdict() {
    [ -s /tmp/verdict ] || echo "$*" > /tmp/verdict
}

# fail detail...: records a failure and ends the scenario.
fail() {
    verdict FAIL "$*"
    exit 1
}

# start_guest NAME [CONFIG]: starts the lwdom guest /lab/guests/NAME,
# monitored by `xl create -F` in the background (its output in
# /tmp/NAME.xl); CONFIG is added to its xl configuration (e.g. a `disk`
# line). The guest runs on physical CPU 1; dom0 (one vCPU) is pinned to
# CPU 0, so the two ends of a ring spin in parallel instead of taking turns.
start_guest() {
    cat > /tmp/$1.cfg <<CFG
name = "$1"
type = "pv"
kernel = "/lab/guests/$1"
memory = 32
vcpus = 1
cpus = "1"
on_crash = "preserve"
on_poweroff = "preserve"
on_reboot = "preserve"
${2:-}
CFG
    xl create -F /tmp/$1.cfg > /tmp/$1.xl 2>&1 &
    XL_PID=$!
    DOMID=""
    end=$(( $(date +%s) + 20 ))
    while [ $(date +%s) -le $end ]; do
        DOMID=$(xl domid "$1" 2>/dev/null) && [ -n "$DOMID" ] && break
        DOMID=""
        if ! kill -0 $XL_PID 2>/dev/null; then
            cat /tmp/$1.xl
            fail "xl create $1 failed: $(tail -n 3 /tmp/$1.xl | tr '\n' ' ')"
        fi
        sleep 0.2
    done
    [ -n "$DOMID" ] || fail "domain $1 did not appear within 20 s"
    echo "started $1 as domain $DOMID"
}

# xs_wait KEY SECONDS: waits for a xenstore key, prints its value.
xs_wait() {
    end=$(( $(date +%s) + $2 ))
    while [ $(date +%s) -le $end ]; do
        if v=$(xenstore-read "$1" 2>/dev/null); then
            echo "$v"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# wait_shutdown NAME SECONDS: waits for the guest to shut down; sets
# REASON to the shutdown reason code xl reported (0 poweroff, 1 reboot,
# 2 suspend, 3 crash), or fails the scenario when it does not shut down in
# time. The domain is preserved (its xenstore keys stay readable) until
# `end_guest`.
#
# With `pci=` in the configuration, xl's monitoring child sometimes aborts
# ("corrupted double-linked list") while the guest runs on; the guest's
# state is then polled from `xl list` (`s`: shut down, `c`: crashed; a
# reboot cannot be told from a poweroff there, the guests never reboot).
wait_shutdown() {
    end=$(( $(date +%s) + $2 ))
    REASON=""
    while ! grep -q "has shut down, reason code" /tmp/$1.xl 2>/dev/null; do
        if ! kill -0 $XL_PID 2>/dev/null; then
            st=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }')
            case "$st" in
                "") echo "xl's monitor of $1 ended and the domain is gone"; break ;;
                *c*) echo "xl's monitor of $1 ended; xl list says $st (crashed)"; REASON=3; break ;;
                *s*) echo "xl's monitor of $1 ended; xl list says $st (shut down)"; REASON=0; break ;;
            esac
        fi
        if [ $(date +%s) -gt $end ]; then
            xl destroy "$1" 2>/dev/null
            fail "guest $1 did not shut down within $2 s"
        fi
        sleep 0.2
    done
    cat /tmp/$1.xl
    [ -n "$REASON" ] || REASON=$(sed -n 's/.*has shut down, reason code \([0-9]*\).*/\1/p' /tmp/$1.xl | head -n 1)
    case "$REASON" in
        0) REASON_NAME=poweroff ;;
        1) REASON_NAME=reboot ;;
        2) REASON_NAME=suspend ;;
        3) REASON_NAME=crash ;;
        *) REASON_NAME="unknown (${REASON:-none})" ;;
    esac
}

# expect_poweroff NAME: fails the scenario unless the guest powered off.
expect_poweroff() {
    [ "$REASON" = "0" ] || { end_guest "$1"; fail "guest $1 shut down with reason $REASON_NAME, expected poweroff (see its console)"; }
}

# end_guest NAME: destroys the (preserved) guest.
end_guest() {
    xl destroy "$1" >/dev/null 2>&1
    kill $XL_PID 2>/dev/null
}

# pci_ready BDF...: fails the scenario unless Xen's IOMMU is on and each
# device was made assignable by dom0's init (see /run/lab-pci).
pci_ready() {
    info=$(cat /run/lab-pci 2>/dev/null)
    echo "dom0's PCI setup: $info"
    case "$info" in
        *"I/O virtualisation enabled"*) ;;
        *) fail "Xen's IOMMU is off (no \"I/O virtualisation enabled\" in xl dmesg): passthrough needs QEMU's intel-iommu and Xen's iommu= option" ;;
    esac
    for bdf in "$@"; do
        case "$info" in
            *"0000:$bdf"*) ;;
            *) fail "$bdf is not assignable (xl pci-assignable-add failed at boot; see /var/log/xen/pci-assignable-$bdf.log)" ;;
        esac
    done
}

# start_pci_guest NAME BDF... [-- CONFIG]: checks the devices with
# `pci_ready`, then starts the guest with `pci = [...]` for them.
start_pci_guest() {
    name=$1
    shift
    list=""
    devs=""
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        list="$list${list:+, }\"$1\""
        devs="$devs $1"
        shift
    done
    [ "${1:-}" = "--" ] && shift
    pci_ready $devs
    start_guest "$name" "pci = [ $list ]
${1:-}"
}
