//! Compiles the .proto files with protox (no protoc needed) into tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "workload.proto",
        "types.proto",
        "agent.proto",
        "admin.proto",
        "local.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
