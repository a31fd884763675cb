//! Counters of a device, across connections.

/// What a device has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames put on a TX ring.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the backend dropped (`NETIF_RSP_DROPPED`).
    pub tx_dropped: u64,
    /// Frames the backend refused as malformed (`NETIF_RSP_ERROR`).
    pub tx_errors: u64,
    /// Frames refused before reaching the ring (bad length or offloads).
    pub tx_refused: u64,
    /// Frames in flight or waiting when their connection ended: failed,
    /// their pages recycled, never re-sent.
    pub tx_aborted: u64,
    /// Frames received and handed to the application.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Packets the backend reported failed (negative status) or too short
    /// to be Ethernet frames.
    pub rx_dropped: u64,
    /// Received frames the backend marked as GSO (one frame for several
    /// TCP segments; an extra-info slot gives the segment size).
    pub rx_gso_frames: u64,
    /// Received frames whose partial checksum (`NETRXF_csum_blank`) the
    /// driver completed in place.
    pub rx_csum_completed: u64,
    /// Frames dropped because their partial checksum could not be
    /// completed (not TCP or UDP over IP, malformed headers).
    pub rx_csum_errors: u64,
    /// Times a refill found the RX pool empty (the application holds
    /// every received page).
    pub rx_pool_empty: u64,
    /// Event channel notifications sent to the backend.
    pub notifications: u64,
    /// Connections that reached Connected.
    pub connections: u64,
    /// Connections that ended (the backend went away, or the device was
    /// closed).
    pub disconnections: u64,
    /// Quarantined grant refs recovered by the poll loop's retries.
    pub grants_recovered: u64,
}
