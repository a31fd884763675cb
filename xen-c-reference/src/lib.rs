//! Placeholder: filled next.
