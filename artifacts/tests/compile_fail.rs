//! A malformed value in a generated file must be a compile error that says what is wrong.

#[test]
fn malformed_pins_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile-fail/*.rs");
}
