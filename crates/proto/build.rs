//! Compiles the `.proto` files under the workspace's `proto/` directory with a
//! vendored `protoc`, so the build needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "ballastpb/command.proto",
        "ballastpb/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &files.map(|f| root.join(f)), &[root])?;
    Ok(())
}
