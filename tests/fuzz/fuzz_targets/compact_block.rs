#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chainmesh_fuzz::compact_block(data);
});
