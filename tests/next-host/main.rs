//! `next-host RELEASE DATA LIBRARY`: deploys RELEASE (built against the workspace's graft API)
//! on a host one minor version ahead, calls `ping@1` with a typed call, then reads from
//! LIBRARY's root module the field the newer API appended. Prints one line:
//! `host_api=.. plugin_api=.. ping=.. next_api_field=..`.

use std::error::Error;
use std::path::PathBuf;

use graft_api::PluginModRef;

graft_api::contract! {
    struct PingV1 = "ping@1": fn(u64) -> u64;
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [release, data, library] = args.as_slice() else {
        return Err("usage: next-host RELEASE DATA LIBRARY".into());
    };
    let host = graft_host::Host::builder(data).build()?;
    host.deploy(release)?;
    let ping = host.typed_export::<PingV1>()?;
    let answer = host.call_typed(&ping, 41)?;

    // The root module as this newer API sees it: a prefix with one field more than the plugin
    // has. abi_stable's `missing_field(option)` makes the field read as `None`, not panic.
    let header = abi_stable::library::lib_header_from_path(library)?;
    let plugin_api = header.version_strings().version.to_string();
    // abi_stable's own check would refuse the older module (it lets only the loader be the
    // older side); graft's loader checked this library's fields against the host's in `deploy`.
    // SAFETY: the same file passed that check above; its root module is a prefix of ours.
    let module = unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }?;
    println!(
        "host_api={} plugin_api={plugin_api} ping={answer} next_api_field={:?}",
        graft_api::API_VERSION,
        module.next_api_field(),
    );
    Ok(())
}
