//! Data files for idlora, shared by training (`idlora-train`) and the benchmarks (`idlora-eval`)
//! without either depending on the other.
//!
//! - [`records`]: rows of JSON arrays, JSONL (optionally gzip), Parquet and Arrow IPC files (what
//!   Hugging Face `datasets` writes), told apart by their first bytes; instruction records read
//!   from them in a [`Format`] (Alpaca, GSM8K or named [`Columns`]).
//! - [`prompt`]: the prompt formats (raw, chat, Alpaca's template) and the file that records
//!   which one a model was trained with.
//! - [`atomic`]: [`write_atomic`], the one way every crate writes a result file, checkpoint
//!   piece or download, so that a crash never leaves half a file.
//!
//! Without the default `read` feature only [`atomic`] is built (no arrow, no parquet), which is
//! what the bottom crates (adapter, cluster, assets) take.
//!
//! ```
//! use idlora_data::{Format, read_records};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("math.jsonl");
//! idlora_data::write_atomic(&path, b"{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n")?;
//! let read = read_records(&path, &Format::Gsm8k)?;
//! assert_eq!(read.records[0].instruction, "1+1?");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
#[cfg(feature = "read")]
pub mod error;
#[cfg(feature = "read")]
pub mod prompt;
#[cfg(feature = "read")]
pub mod records;
#[cfg(feature = "read")]
mod tabular;

pub use atomic::{WriteError, write_atomic, write_atomic_with};
#[cfg(feature = "read")]
pub use error::{DataError, Result};
#[cfg(feature = "read")]
pub use records::{Columns, Format, Malformed, RawRow, Record, SourceRecords, read_records, read_rows};
