//! Delta ADS client (placeholder while being written).
