//! Compiles `schemas/*.proto` with protox (a pure-Rust protobuf compiler), so building
//! chainmesh never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schemas = ["schemas/chain.proto", "schemas/net.proto"];
    for s in schemas {
        println!("cargo:rerun-if-changed={s}");
    }
    let fds = protox::compile(schemas, ["schemas"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
