//! Integration tests of the Stripe adapter against the in-process Stripe sandbox (one sandbox
//! per test, on a free port). One test binary: linking async-stripe is the slow part.

mod cards;
mod charges;
mod checkout;
mod common;
mod faults;
mod webhooks;
