/*
 * The netif ABI as Xen's own header lays it out. Prints one line per row:
 *   T <type> <size> <align>
 *   F <type>.<member> <offset> <size>
 *   C <CONSTANT> <value>
 * Compiled and run by tests/abi_layout.rs.
 */
#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/netif.h>

#define T(label, type) \
    printf("T %s %zu %zu\n", label, sizeof(type), _Alignof(type))
#define F(label, type, member)                                  \
    printf("F %s.%s %zu %zu\n", label, #member, offsetof(type, member), \
           sizeof(((type *)0)->member))
#define C(name) printf("C %s %lld\n", #name, (long long)(name))

int main(void)
{
    T("netif_tx_request", struct netif_tx_request);
    F("netif_tx_request", struct netif_tx_request, gref);
    F("netif_tx_request", struct netif_tx_request, offset);
    F("netif_tx_request", struct netif_tx_request, flags);
    F("netif_tx_request", struct netif_tx_request, id);
    F("netif_tx_request", struct netif_tx_request, size);

    T("netif_tx_response", struct netif_tx_response);
    F("netif_tx_response", struct netif_tx_response, id);
    F("netif_tx_response", struct netif_tx_response, status);

    T("netif_rx_request", struct netif_rx_request);
    F("netif_rx_request", struct netif_rx_request, id);
    F("netif_rx_request", struct netif_rx_request, pad);
    F("netif_rx_request", struct netif_rx_request, gref);

    T("netif_rx_response", struct netif_rx_response);
    F("netif_rx_response", struct netif_rx_response, id);
    F("netif_rx_response", struct netif_rx_response, offset);
    F("netif_rx_response", struct netif_rx_response, flags);
    F("netif_rx_response", struct netif_rx_response, status);

    T("netif_extra_info", struct netif_extra_info);
    F("netif_extra_info", struct netif_extra_info, type);
    F("netif_extra_info", struct netif_extra_info, flags);
    F("netif_extra_info", struct netif_extra_info, u);
    /* The union members, as offsets within the union. */
    T("extra_gso", __typeof__(((struct netif_extra_info *)0)->u.gso));
    F("extra_gso", __typeof__(((struct netif_extra_info *)0)->u.gso), size);
    F("extra_gso", __typeof__(((struct netif_extra_info *)0)->u.gso), type);
    F("extra_gso", __typeof__(((struct netif_extra_info *)0)->u.gso), pad);
    F("extra_gso", __typeof__(((struct netif_extra_info *)0)->u.gso), features);
    T("extra_mcast", __typeof__(((struct netif_extra_info *)0)->u.mcast));
    F("extra_mcast", __typeof__(((struct netif_extra_info *)0)->u.mcast), addr);
    T("extra_hash", __typeof__(((struct netif_extra_info *)0)->u.hash));
    F("extra_hash", __typeof__(((struct netif_extra_info *)0)->u.hash), type);
    F("extra_hash", __typeof__(((struct netif_extra_info *)0)->u.hash), algorithm);
    F("extra_hash", __typeof__(((struct netif_extra_info *)0)->u.hash), value);

    /* The ring slots and ring sizes of one page. */
    T("netif_tx_sring_entry", union netif_tx_sring_entry);
    T("netif_rx_sring_entry", union netif_rx_sring_entry);
    printf("C NET_TX_RING_SIZE %lld\n", (long long)__CONST_RING_SIZE(netif_tx, 4096));
    printf("C NET_RX_RING_SIZE %lld\n", (long long)__CONST_RING_SIZE(netif_rx, 4096));

    C(XEN_NETIF_NR_SLOTS_MIN);
    C(XEN_NETIF_MAX_TX_SIZE);
    C(NETTXF_csum_blank);
    C(NETTXF_data_validated);
    C(NETTXF_more_data);
    C(NETTXF_extra_info);
    C(NETRXF_data_validated);
    C(NETRXF_csum_blank);
    C(NETRXF_more_data);
    C(NETRXF_extra_info);
    C(NETRXF_gso_prefix);
    C(XEN_NETIF_EXTRA_TYPE_NONE);
    C(XEN_NETIF_EXTRA_TYPE_GSO);
    C(XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
    C(XEN_NETIF_EXTRA_TYPE_MCAST_DEL);
    C(XEN_NETIF_EXTRA_TYPE_HASH);
    C(XEN_NETIF_EXTRA_TYPE_MAX);
    C(XEN_NETIF_EXTRA_FLAG_MORE);
    C(XEN_NETIF_GSO_TYPE_NONE);
    C(XEN_NETIF_GSO_TYPE_TCPV4);
    C(XEN_NETIF_GSO_TYPE_TCPV6);
    C(_XEN_NETIF_CTRL_HASH_TYPE_IPV4);
    C(_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
    C(_XEN_NETIF_CTRL_HASH_TYPE_IPV6);
    C(_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP);
    C(XEN_NETIF_CTRL_HASH_ALGORITHM_NONE);
    C(XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ);
    C(NETIF_RSP_DROPPED);
    C(NETIF_RSP_ERROR);
    C(NETIF_RSP_OKAY);
    C(NETIF_RSP_NULL);
    return 0;
}
