//! The shadow verdict's rules, one path at a time, its statistics against the golden values,
//! and a simulation of the every-interval look.
