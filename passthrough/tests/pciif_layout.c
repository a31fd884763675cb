/*
 * The pciif ABI as Xen's own header lays it out. Prints "<name> <value>"
 * rows: sizes, offsets and constants. Compiled and run by
 * tests/pciif_layout.rs.
 */
#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/pciif.h>

#define V(name, value) printf("%s %lld\n", name, (long long)(value))
#define OFF(type, member) V(#type "." #member, offsetof(struct type, member))

int main(void)
{
    V("sizeof.xen_pci_op", sizeof(struct xen_pci_op));
    V("sizeof.xen_pcie_aer_op", sizeof(struct xen_pcie_aer_op));
    V("sizeof.xen_pci_sharedinfo", sizeof(struct xen_pci_sharedinfo));
    V("sizeof.xen_msix_entry", sizeof(struct xen_msix_entry));
    OFF(xen_pci_sharedinfo, flags);
    OFF(xen_pci_sharedinfo, op);
    OFF(xen_pci_sharedinfo, aer_op);
    OFF(xen_pci_op, cmd);
    OFF(xen_pci_op, err);
    OFF(xen_pci_op, domain);
    OFF(xen_pci_op, bus);
    OFF(xen_pci_op, devfn);
    OFF(xen_pci_op, offset);
    OFF(xen_pci_op, size);
    OFF(xen_pci_op, value);
    OFF(xen_pci_op, info);
    OFF(xen_pci_op, msix_entries);
    OFF(xen_msix_entry, vector);
    OFF(xen_msix_entry, entry);
    V("XEN_PCIF_active", XEN_PCIF_active);
    V("XEN_PCIB_AERHANDLER", XEN_PCIB_AERHANDLER);
    V("XEN_PCIB_active", XEN_PCIB_active);
    V("XEN_PCI_OP_conf_read", XEN_PCI_OP_conf_read);
    V("XEN_PCI_OP_conf_write", XEN_PCI_OP_conf_write);
    V("XEN_PCI_OP_enable_msi", XEN_PCI_OP_enable_msi);
    V("XEN_PCI_OP_disable_msi", XEN_PCI_OP_disable_msi);
    V("XEN_PCI_OP_enable_msix", XEN_PCI_OP_enable_msix);
    V("XEN_PCI_OP_disable_msix", XEN_PCI_OP_disable_msix);
    V("XEN_PCI_ERR_dev_not_found", XEN_PCI_ERR_dev_not_found);
    V("XEN_PCI_ERR_invalid_offset", XEN_PCI_ERR_invalid_offset);
    V("XEN_PCI_ERR_access_denied", XEN_PCI_ERR_access_denied);
    V("XEN_PCI_ERR_not_implemented", XEN_PCI_ERR_not_implemented);
    V("XEN_PCI_ERR_op_failed", XEN_PCI_ERR_op_failed);
    V("SH_INFO_MAX_VEC", SH_INFO_MAX_VEC);
    printf("XEN_PCI_MAGIC %s\n", XEN_PCI_MAGIC);
    return 0;
}
