fn main() -> std::process::ExitCode {
    chainmesh_node::main()
}
