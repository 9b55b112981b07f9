//! The contracts of the foo/bar/frob example plugins and the values they pass, shared by the
//! plugins and the tests: the pattern for a service's own contracts.
//!
//! Each contract is declared once, here, with its types; the exporter implements it, importers
//! call it and the host calls it by naming the same type, so passing the wrong type does not
//! compile, and two builds that disagree on a type (one built from an older copy of this crate)
//! are refused when they link.
//!
//! `foo(a) = bar(frob(a))`. Contract 1: frob returns one value and bar doubles it. Contract 2:
//! frob also returns an extra element and bar adds it. Every output records the versions of the
//! plugins that produced it, so a test can see whether one request mixed two releases.
//!
//! The values are `#[repr(C)]` and derive `StableAbi`, so they cross between plugins as they
//! are, with no encoding (strings are `RString`, optional values `ROption`); they also derive
//! serde, which gives `foo@1` the JSON adapter `graft serve` calls it through.

use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

graft_api::contract! {
    /// The entry point: `bar(frob(a))`, and who computed it.
    pub struct FooV1 = "foo@1": fn(FooInput) -> FooOutput;
    /// `a + 1`.
    pub struct FrobV1 = "frob@1": fn(u64) -> Frob1;
    /// `a + 1`, and an extra element.
    pub struct FrobV2 = "frob@2": fn(u64) -> Frob2;
    /// Doubles frob's value.
    pub struct BarV1 = "bar@1": fn(Frob1) -> BarOutput;
    /// Doubles frob's value and adds its extra element.
    pub struct BarV2 = "bar@2": fn(Frob2) -> BarOutput;
}

/// The input of `foo@1`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, Serialize, Deserialize)]
pub struct FooInput {
    /// The argument.
    pub a: u64,
    /// Milliseconds to sleep between the frob call and the bar call.
    #[serde(default)]
    pub pause_ms: u64,
    /// A directory: after frob, create `frob-done` there and wait for `go` before calling bar.
    #[serde(default)]
    pub gate: ROption<RString>,
}

/// The output of `foo@1`: the value and who computed it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FooOutput {
    /// `bar(frob(a))`.
    pub value: u64,
    /// Version of the foo plugin that ran.
    pub foo: RString,
    /// Version of the bar plugin that ran.
    pub bar: RString,
    /// Version of the frob plugin that ran.
    pub frob: RString,
}

impl FooOutput {
    /// Whether foo, bar and frob came from builds with different major versions.
    pub fn is_mixed(&self) -> bool {
        let major = |v: &str| v.split('.').next().unwrap_or_default().to_owned();
        major(&self.foo) != major(&self.bar) || major(&self.bar) != major(&self.frob)
    }
}

/// The output of `frob@1`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Serialize, Deserialize)]
pub struct Frob1 {
    /// `a + 1`.
    pub x: u64,
    /// Version of the frob plugin that ran.
    pub version: RString,
}

/// The output of `frob@2`: one more element than `frob@1`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Serialize, Deserialize)]
pub struct Frob2 {
    /// `a + 1`.
    pub x: u64,
    /// The element contract 2 added.
    pub extra: u64,
    /// Version of the frob plugin that ran.
    pub version: RString,
}

/// The output of `bar@1` and `bar@2`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Serialize, Deserialize)]
pub struct BarOutput {
    /// The value.
    pub value: u64,
    /// Version of the bar plugin that ran.
    pub version: RString,
}

/// What foo does at a gate (see [`FooInput::gate`]): signal that frob was called by creating
/// `GATE/frob-done`, then wait (at most 60 s) for the test to create `GATE/go`.
///
/// # Errors
///
/// When the marker cannot be written or the gate never opens.
pub fn wait_at_gate(gate: &std::path::Path) -> Result<(), String> {
    hold_at_gate(gate, "frob-done")
}

/// How a test plugin is held by a test: create `GATE/MARKER` (the test waits for it), then wait
/// (at most 60 s) for the test to create `GATE/go`.
///
/// # Errors
///
/// When the marker cannot be written or the gate never opens.
pub fn hold_at_gate(gate: &std::path::Path, marker: &str) -> Result<(), String> {
    use std::time::{Duration, Instant};
    std::fs::write(gate.join(marker), b"").map_err(|e| format!("writing the gate marker: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gate.join("go").exists() {
        if Instant::now() > deadline {
            return Err("gate never opened".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The counter example's contracts and state types (`counter-v1`, `counter-v2`).
pub mod counter {
    use std::sync::atomic::{AtomicU64, Ordering};

    use abi_stable::StableAbi;
    use graft_api::{Error, State};

    graft_api::contract! {
        /// Adds one under a key (0 to [`KEYS`] - 1; schema 1 keeps no keys); returns the new
        /// total.
        pub struct IncrV1 = "incr@1": fn(u32) -> u64;
        /// The total (the input is ignored).
        pub struct TotalV1 = "total@1": fn(u32) -> u64;
        /// The count under one key (schema 2 only).
        pub struct KeyCountV1 = "key-count@1": fn(u32) -> u64;
    }

    /// How many keys schema 2 counts separately.
    pub const KEYS: usize = 8;

    /// Schema 1: a total.
    #[repr(C)]
    #[derive(StableAbi, Debug)]
    pub struct CounterV1 {
        /// Increments since the state was created.
        pub total: AtomicU64,
    }

    // Both schemas ask the host to save the counter across restarts (`graft serve` saves it when
    // it stops, and every `state_save_interval_ms` if set).
    impl State for CounterV1 {
        const SCHEMA: u32 = 1;
        const PERSIST: bool = true;
        fn init() -> Self {
            Self {
                total: AtomicU64::new(0),
            }
        }
    }

    /// Schema 2: the total, and a count per key (`total` is their sum).
    #[repr(C)]
    #[derive(StableAbi, Debug)]
    pub struct CounterV2 {
        /// Increments since the state was created.
        pub total: AtomicU64,
        /// Increments per key; those made under schema 1, which has no keys, count under key 0.
        pub by_key: [AtomicU64; KEYS],
    }

    impl State for CounterV2 {
        const SCHEMA: u32 = 2;
        const PERSIST: bool = true;
        fn init() -> Self {
            Self {
                total: AtomicU64::new(0),
                by_key: Default::default(),
            }
        }
    }

    impl CounterV2 {
        /// Schema 1 → 2: the old total, all of it under key 0.
        pub fn from_v1(old: &CounterV1) -> Self {
            let total = old.total.load(Ordering::Acquire);
            let new = Self::init();
            new.total.store(total, Ordering::Relaxed);
            new.by_key[0].store(total, Ordering::Relaxed);
            new
        }

        /// The count under `key`.
        ///
        /// # Errors
        ///
        /// [`Error::invalid`] when `key` is not below [`KEYS`].
        pub fn key(&self, key: u32) -> Result<&AtomicU64, Error> {
            self.by_key
                .get(key as usize)
                .ok_or_else(|| Error::invalid(format!("key {key} is not below {KEYS}")))
        }

        /// Schema 2 → 1: the total (the per-key counts have no place in schema 1).
        pub fn to_v1(&self) -> CounterV1 {
            CounterV1 {
                total: AtomicU64::new(self.total.load(Ordering::Acquire)),
            }
        }
    }
}

/// The key-value store example's contracts and value types (`kv-v1`, `kv-v2`): a table of
/// string keys whose value type gains a field in schema 2.
pub mod kv {
    use graft_api::table::Record;
    use serde::{Deserialize, Serialize};

    graft_api::contract! {
        /// Sets `value` under `key`; answers whether it replaced a value.
        pub struct PutV1 = "kv.put@1": json fn(Put) -> bool;
        /// The value under a key (not found: a 404).
        pub struct GetV1 = "kv.get@1": json fn(String) -> String;
        /// The values under many keys (at most 10,000), each or `None`.
        pub struct GetManyV1 = "kv.get-many@1": json fn(Vec<String>) -> Vec<Option<String>>;
        /// How many keys the store holds (the input is ignored).
        pub struct CountV1 = "kv.count@1": json fn(Option<u8>) -> u64;
    }

    /// The input of `kv.put@1`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Put {
        /// The key.
        pub key: String,
        /// The value.
        pub value: String,
    }

    /// Schema 1 of the store's entries: the value.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct EntryV1 {
        /// The value.
        pub value: String,
    }

    impl Record for EntryV1 {
        const SCHEMA: u32 = 1;
    }

    /// Schema 2: the value, and how many times the key was put.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct EntryV2 {
        /// The value.
        pub value: String,
        /// How many times the key was put (an entry migrated from schema 1 counts one).
        pub puts: u64,
    }

    impl Record for EntryV2 {
        const SCHEMA: u32 = 2;
    }

    impl From<EntryV1> for EntryV2 {
        fn from(old: EntryV1) -> Self {
            Self {
                value: old.value,
                puts: 1,
            }
        }
    }

    impl From<EntryV2> for EntryV1 {
        fn from(new: EntryV2) -> Self {
            Self { value: new.value }
        }
    }

    /// The most keys one `kv.get-many@1` reads.
    pub const MAX_MANY: usize = 10_000;
}

pub mod notes;

/// The hits example's contracts (`hits`): a table of integer keys, called by value.
pub mod hits {
    graft_api::contract! {
        /// The count under a key (0 when absent).
        pub struct GetV1 = "hits.get@1": fn(u64) -> u64;
        /// Sets the count under a key to the key itself; answers it.
        pub struct SetV1 = "hits.set@1": fn(u64) -> u64;
        /// Adds one under a key; answers the new count.
        pub struct IncrV1 = "hits.incr@1": fn(u64) -> u64;
    }
}
