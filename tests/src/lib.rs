//! molar's end-to-end test harness: real controllers and real agents, in-process over loopback
//! TLS ([`inproc`]), the binaries as a user runs them ([`bins`]), and the QEMU lab.
//!
//! Test-only task kinds live here ([`inproc::Count`]): the product ships no fake tasks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bins;
pub mod inproc;
pub mod lab;
pub mod privileged;
pub mod standin;
