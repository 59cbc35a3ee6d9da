fn main() {
    println!("kiln: CLI coming with the models issue");
}
