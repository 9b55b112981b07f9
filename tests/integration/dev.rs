//! `graft dev`: edit a plugin's source and the next request runs the new build; a build that
//! does not compile leaves the previous one serving.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::{graft_bin, target_dir, workspace_root, Env, KillOnDrop};

/// The dev profile the README recommends for plugin crates (and `scripts/dev-loop.sh` uses):
/// the library graft dev hashes and loads is a few MB, not 18.
const DEV_PROFILE: &str = r#"[profile.dev]
split-debuginfo = "unpacked"
[profile.dev.package."*"]
debug = false
"#;

/// A plugin crate outside the workspace, the way a user's own plugin would be.
fn write_plugin_crate(dir: &Path, greeting: &str) {
    write_crate(dir, "dev-loop-plugin");
    set_greeting(dir, greeting);
}

/// A cdylib crate named `package` depending on graft-api, with no source yet.
fn write_crate(dir: &Path, package: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let api = workspace_root().join("plugin-api");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{package}"
version = "1.0.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
graft-api = {{ path = {api:?} }}
abi_stable = "0.11.3"
serde = {{ version = "1", features = ["derive"] }}

{DEV_PROFILE}
[workspace]
"#
        ),
    )
    .unwrap();
    // The workspace's lock file, so the build reuses the dependencies the tests already built.
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

fn set_greeting(dir: &Path, greeting: &str) {
    write_source(
        dir,
        &format!(
            r#"use graft_api::{{Context, Error}};

graft_api::contract! {{
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
}}

graft_api::plugin! {{
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: {{ HelloV1 => hello }},
}}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {{
    Ok(format!("{greeting}, {{name}}"))
}}
"#
        ),
    );
}

fn write_source(dir: &Path, text: &str) {
    // Written in place, as an editor saving the file would.
    std::fs::write(dir.join("src/lib.rs"), text).unwrap();
}

/// `graft dev` as a child process: its service URL, and its output lines as they come.
fn spawn_graft_dev(env: &Env, krate: &Path) -> (KillOnDrop, String, mpsc::Receiver<String>) {
    spawn_graft_dev_of(env, &[krate], "hello")
}

/// `graft dev` of several crates, routing `POST /{export's name}` to `{export}@1`.
fn spawn_graft_dev_of(
    env: &Env,
    crates: &[&Path],
    export: &str,
) -> (KillOnDrop, String, mpsc::Receiver<String>) {
    let config = env.path("graft.toml");
    std::fs::write(
        &config,
        // No data_dir: graft dev stages in a temp directory of its own.
        format!(
            r#"listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[route]]
method = "POST"
path = "/{export}"
export = "{export}@1"
"#
        ),
    )
    .unwrap();
    // No --data-dir either: staged in a temp directory removed on exit.
    let mut child = Command::new(graft_bin())
        .args(["dev", "--config"])
        .arg(&config)
        .args(crates)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .trim_end_matches(',')
        .to_owned();
    (KillOnDrop(child), base, rx)
}

/// The next output line, which must start with `prefix`.
fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    // The first build may compile graft-api; later ones only the plugin.
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("no line starting {prefix:?}: {e}"));
    assert!(
        line.starts_with(prefix),
        "expected {prefix:?}, got {line:?}"
    );
    line
}

fn hello(base: &str) -> (u64, String) {
    let mut response = ureq::post(format!("{base}/hello"))
        .content_type("application/json")
        .send(r#""you""#)
        .unwrap();
    let generation = response.headers()["x-graft-generation"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (generation, response.body_mut().read_to_string().unwrap())
}

#[test]
fn an_edit_goes_live_and_a_syntax_error_keeps_the_last_build_serving() {
    let env = Env::new();
    let krate: PathBuf = env.path("plugin");
    write_plugin_crate(&krate, "hello");
    let (_child, base, rx) = spawn_graft_dev(&env, &krate);

    expect_line(&rx, "reload 1: generation 1 live (hello 1.0.0 added)");
    assert_eq!(hello(&base), (1, r#""hello, you""#.into()));

    set_greeting(&krate, "good morning");
    let line = expect_line(&rx, "reload 2: generation 2 live (hello 1.0.0 replaced)");
    assert!(line.contains("ms after the build"), "{line}");
    assert_eq!(hello(&base), (2, r#""good morning, you""#.into()));

    write_source(&krate, "fn hello( {");
    let line = expect_line(&rx, "reload 3: build failed");
    assert!(line.ends_with("generation 2 keeps serving"), "{line}");
    assert_eq!(hello(&base), (2, r#""good morning, you""#.into()));

    // Fixing the error goes live again.
    set_greeting(&krate, "good evening");
    expect_line(&rx, "reload 4: generation 3 live (hello 1.0.0 replaced)");
    assert_eq!(hello(&base), (3, r#""good evening, you""#.into()));
}

/// `catalog` exports `price@{version}` (`a * factor`).
fn set_catalog(dir: &Path, version: u32, factor: u64) {
    write_source(
        dir,
        &format!(
            r#"use graft_api::{{Context, Error}};

graft_api::contract! {{
    pub struct Price = "price@{version}": json fn(u64) -> u64;
}}

graft_api::plugin! {{
    name: "catalog",
    version: env!("CARGO_PKG_VERSION"),
    exports: {{ Price => price }},
}}

fn price(_: &Context<'_>, a: u64) -> Result<u64, Error> {{
    Ok(a * {factor})
}}
"#
        ),
    );
}

/// `checkout` exports `checkout@1` (`price + 1`), importing `price@{version}`.
fn set_checkout(dir: &Path, version: u32) {
    write_source(
        dir,
        &format!(
            r#"use graft_api::{{Context, Error}};

graft_api::contract! {{
    pub struct Price = "price@{version}": json fn(u64) -> u64;
    pub struct Checkout = "checkout@1": json fn(u64) -> u64;
}}

graft_api::plugin! {{
    name: "checkout",
    version: env!("CARGO_PKG_VERSION"),
    imports: {{ PRICE: Price }},
    exports: {{ Checkout => checkout }},
}}

fn checkout(ctx: &Context<'_>, a: u64) -> Result<u64, Error> {{
    Ok(ctx.call(PRICE, a)? + 1)
}}
"#
        ),
    );
}

fn checkout(base: &str) -> String {
    ureq::post(format!("{base}/checkout"))
        .content_type("application/json")
        .send("10")
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn a_change_spanning_two_crates_lands_once_both_are_saved_and_sigterm_stops_it() {
    let env = Env::new();
    let (catalog, checkout_crate) = (env.path("catalog"), env.path("checkout"));
    write_crate(&catalog, "span-catalog");
    write_crate(&checkout_crate, "span-checkout");
    set_catalog(&catalog, 1, 2);
    set_checkout(&checkout_crate, 1);
    let (mut child, base, rx) = spawn_graft_dev_of(&env, &[&catalog, &checkout_crate], "checkout");
    expect_line(&rx, "reload 1: generation 1 live");
    assert_eq!(checkout(&base), "21");

    // catalog moves to price@2 first: checkout still imports price@1, so it cannot link.
    set_catalog(&catalog, 2, 3);
    let line = expect_line(&rx, "reload 2: built in");
    assert!(
        line.contains("refused") && line.contains("price@1"),
        "{line}"
    );
    assert_eq!(checkout(&base), "21", "generation 1 keeps serving");

    // Then checkout: both crates are built and deployed together, and the change lands.
    set_checkout(&checkout_crate, 2);
    let line = expect_line(&rx, "reload 3: generation 2 live");
    assert!(
        line.contains("catalog") && line.contains("checkout"),
        "{line}"
    );
    assert_eq!(checkout(&base), "31");

    // SIGTERM: it says it is stopping, and stops.
    crate::serve::sigterm(&child);
    expect_line(&rx, "graft dev: stopping");
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    eprintln!("graft dev exited {:?} after SIGTERM", started.elapsed());
    assert!(status.success(), "{status:?}");
}

/// A workspace of three crates: `types` (a library: the `Price` type and the `price@1`
/// contract), `catalog` (a plugin exporting `price@1`) and `cart` (a plugin importing it and
/// exporting `checkout@1`).
fn write_shop(root: &Path) {
    let api = workspace_root().join("plugin-api");
    let manifest = |name: &str, kind: &str, types: bool| {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let types = if types {
            "shop-types = { path = \"../types\" }\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                r#"[package]
name = "shop-{name}"
version = "1.0.0"
edition = "2021"

[lib]
crate-type = [{kind:?}]

[dependencies]
graft-api = {{ path = {api:?} }}
abi_stable = "0.11.3"
{types}"#
            ),
        )
        .unwrap();
    };
    manifest("types", "rlib", false);
    manifest("catalog", "cdylib", true);
    manifest("cart", "cdylib", true);
    std::fs::write(
        root.join("Cargo.toml"),
        format!("[workspace]\nmembers = [\"types\", \"catalog\", \"cart\"]\nresolver = \"2\"\n\n{DEV_PROFILE}"),
    )
    .unwrap();
    std::fs::copy(workspace_root().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    set_price_type(root, "pub cents: u64,");
    set_source(root, "catalog", &catalog_source("Price { cents: a * 2 }"));
    set_source(
        root,
        "cart",
        r#"use graft_api::{Context, Error};
use shop_types::PriceV1;

graft_api::contract! {
    pub struct Checkout = "checkout@1": json fn(u64) -> u64;
}

graft_api::plugin! {
    name: "cart",
    version: env!("CARGO_PKG_VERSION"),
    imports: { PRICE: PriceV1 },
    exports: { Checkout => checkout },
}

fn checkout(ctx: &Context<'_>, a: u64) -> Result<u64, Error> {
    let price = ctx.call(PRICE, a)?;
    Ok(price.cents + 1)
}
"#,
    );
}

fn set_source(root: &Path, krate: &str, text: &str) {
    std::fs::write(root.join(krate).join("src/lib.rs"), text).unwrap();
}

/// The shared type, with `fields`.
fn set_price_type(root: &Path, fields: &str) {
    set_source(
        root,
        "types",
        &format!(
            r#"use abi_stable::StableAbi;

/// A price, passed by value.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Price {{
    {fields}
}}

graft_api::contract! {{
    pub struct PriceV1 = "price@1": fn(u64) -> Price;
}}
"#
        ),
    );
}

/// catalog's source, returning `price` (an expression of `a`).
fn catalog_source(price: &str) -> String {
    format!(
        r#"use graft_api::{{Context, Error}};
use shop_types::{{Price, PriceV1}};

graft_api::plugin! {{
    name: "catalog",
    version: env!("CARGO_PKG_VERSION"),
    exports: {{ PriceV1 => price }},
}}

fn price(_: &Context<'_>, a: u64) -> Result<Price, Error> {{
    Ok({price})
}}
"#
    )
}

#[test]
fn a_field_added_to_a_shared_type_lands_in_exporter_and_importer_together_once_both_compile() {
    let env = Env::new();
    let shop = env.path("shop");
    write_shop(&shop);
    // The workspace itself: graft dev finds its plugins (catalog, cart) with cargo metadata.
    let (_child, base, rx) = spawn_graft_dev_of(&env, &[&shop], "checkout");
    let line = expect_line(&rx, "reload 1: generation 1 live");
    assert!(line.contains("catalog") && line.contains("cart"), "{line}");
    assert_eq!(checkout(&base), "21");

    // A field added to the shared type: both plugins are rebuilt, in one cargo build; catalog
    // no longer compiles (it builds a Price without it), so nothing is deployed, and nothing
    // half: cart alone would not link against the catalog that is live.
    set_price_type(&shop, "pub cents: u64,\n    pub tax: u64,");
    let line = expect_line(&rx, "reload 2: build failed");
    assert!(line.contains("shop-catalog"), "{line}");
    assert!(line.ends_with("generation 1 keeps serving"), "{line}");
    assert_eq!(checkout(&base), "21");

    // catalog fixed: it and cart (pending since the type changed) go live together, as one
    // release, with no other step.
    set_source(
        &shop,
        "catalog",
        &catalog_source("Price { cents: a * 3, tax: 5 }"),
    );
    let line = expect_line(&rx, "reload 3: generation 2 live");
    assert!(
        line.contains("catalog 1.0.0 replaced") && line.contains("cart 1.0.0 replaced"),
        "{line}"
    );
    assert_eq!(checkout(&base), "31");
}
