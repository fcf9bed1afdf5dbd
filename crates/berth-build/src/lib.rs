//! Berth's image builder: the Dockerfile front end — the parser ([`parser`]), variable
//! substitution ([`expand`]), the static checks of `build --check` ([`lint`]), `.dockerignore`
//! matching ([`dockerignore`]) — and the executor ([`executor`]) that runs the steps in real
//! containers with a build cache kept in the store, reading COPY sources from a [`context`].

mod config;
pub mod context;
pub mod dockerignore;
mod error;
pub mod executor;
pub mod expand;
pub mod lint;
pub mod parser;
pub mod progress;

pub use config::apply_changes;
pub use context::Context;
pub use error::BuildError;
pub use executor::{build, BuildOptions, Built, Host};
pub use lint::{check, CheckReport, Finding, Severity};
pub use parser::{parse, Dockerfile, Instruction, ParseError};
