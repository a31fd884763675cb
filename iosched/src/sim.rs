//! Simulation (being written).
