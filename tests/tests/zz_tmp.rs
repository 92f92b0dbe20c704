use tessera_tests::*;
#[test]
fn panics_with_open_file() {
    let c = DevCluster::start();
    let _m2 = c.second_mount("mnt2");
    let _f = std::fs::File::create(c.path("open")).unwrap();
    std::fs::write("/tmp/zz_mnt", c.mnt.to_str().unwrap()).unwrap();
    panic!("deliberate");
}
