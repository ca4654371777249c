//! licensegate: a trusted authorization access system for electronic licenses.
//!
//! The library builds the whole application (configuration → store → services →
//! router); `main.rs` only parses the command line and calls into it.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::await_holding_lock
)]

pub mod app;
pub mod audit;
pub mod calendar;
pub mod config;
pub mod consent;
pub mod console;
pub mod demo;
pub mod entities;
pub mod error;
pub mod holders;
pub mod http;
pub mod keys;
pub mod licenses;
pub mod limits;
pub mod notify;
pub mod oauth;
pub mod objections;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod web;

pub use app::{App, Services};
pub use config::Config;
pub use error::{Error, Result};
