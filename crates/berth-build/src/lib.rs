//! Berth's image builder. This first increment is the Dockerfile front end: the parser
//! ([`parser`]), variable substitution ([`expand`]), the static checks of `build --check`
//! ([`lint`]) and `.dockerignore` matching ([`dockerignore`]).

pub mod dockerignore;
pub mod expand;
pub mod lint;
pub mod parser;

pub use lint::{check, CheckReport, Finding, Severity};
pub use parser::{parse, Dockerfile, Instruction, ParseError};
