//! Integration tests of the Stripe sandbox, in one binary to link async-stripe only once.

mod common;
mod compat;
mod faults;
mod hosted;
mod payments;
mod protocol;
mod webhooks;
