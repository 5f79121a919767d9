//! The `chainmesh` binary, built inside this package so the integration tests can run it
//! as a real process (cargo sets CARGO_BIN_EXE_* only for the tested package's binaries).

fn main() -> std::process::ExitCode {
    chainmesh_node::main()
}
