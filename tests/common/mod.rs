//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod chat;
pub mod http;
pub mod postgres;

use std::sync::{Arc, Mutex};

/// A log of what the steps did, shared between a flow and its test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self, entry: &str) -> usize {
        self.entries().iter().filter(|e| e.as_str() == entry).count()
    }

    pub fn position(&self, entry: &str) -> usize {
        self.entries()
            .iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("`{entry}` never ran: {:?}", self.entries()))
    }
}
