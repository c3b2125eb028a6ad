//! Unit tests of the pickle machine: refused globals, plain data, integers and lengths, the memo.

use super::*;

fn run(b: &[u8]) -> Result<Value, PickleError> {
    unpickle(b)
}

#[test]
fn refuses_unknown_globals() {
    let p = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
    assert_eq!(
        run(p).unwrap_err(),
        PickleError::Refused {
            module: "posix".into(),
            name: "system".into()
        }
    );
    // STACK_GLOBAL too.
    let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
    assert_eq!(
        run(p).unwrap_err().to_string(),
        "refusing global builtins.eval"
    );
    // A lookalike of an allowed name.
    let p = b"\x80\x02ctorch\nload\n.";
    assert!(matches!(run(p), Err(PickleError::Refused { .. })));
}

#[test]
fn builds_plain_data() {
    // {'a': [1, -2, 3.5], 'b': (True, None), 300: 'x'} with protocol-2 opcodes.
    let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00b\x88N\x86M,\x01X\x01\x00\x00\x00xu.".to_vec();
    let v = run(&p).unwrap();
    let Value::Dict(d) = &v else { panic!() };
    let d = d.borrow();
    assert_eq!(d.entries.len(), 3);
    let Value::List(l) = &d.entries[0].1 else {
        panic!()
    };
    assert!(matches!(l.borrow()[..], [Value::Int(1), Value::Int(-2), Value::Float(f)] if f == 3.5));
    assert!(matches!(&d.entries[2].0, Value::Int(300)));
    // Every truncation is an error, never a panic.
    for n in 0..p.len() {
        assert!(run(&p[..n]).is_err(), "prefix {n}");
    }
    p[2] = 0xff;
    assert!(run(&p).unwrap_err().to_string().contains("0xff"));
}

#[test]
fn long_and_lengths() {
    assert!(matches!(
        run(b"\x8a\x02\x00\x80.").unwrap(),
        Value::Int(-32768)
    ));
    assert!(matches!(run(b"\x8a\x01\x7f.").unwrap(), Value::Int(127)));
    assert!(run(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").is_err());
    let e = run(b"\x8d\xff\xff\xff\xff\xff\xff\xff\x3f.")
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds"), "{e}");
    let e = run(b"h\x07.").unwrap_err().to_string();
    assert!(e.contains("memo entry 7"), "{e}");
    assert!(run(b"0.").unwrap_err().to_string().contains("underflow"));
    assert!(run(b"(0.").unwrap_err().to_string().contains("underflow"));
}

#[test]
fn memo_shares_mutable_dicts() {
    // d = {}; memo[0] = d; d['k'] = 1; return (memo[0],)  -> the filled dict.
    let p = b"}q\x00X\x01\x00\x00\x00kK\x01sh\x00\x85.";
    let v = run(p).unwrap();
    let Value::Tuple(t) = &v else { panic!() };
    let Value::Dict(d) = &t[0] else { panic!() };
    assert_eq!(d.borrow().entries.len(), 1);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // 150 000 nested tuples: ((((),),),) ... built with TUPLE1.
    let mut p = vec![b')'];
    p.extend(std::iter::repeat_n(0x85u8, 150_000));
    p.push(b'.');
    let e = run(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!("nested more than {MAX_DEPTH} deep")),
        "{e}"
    );
    // EMPTY_LIST/APPEND of empty lists stays shallow and is fine.
    let mut p = Vec::new();
    p.push(b']');
    for _ in 0..150_000 {
        p.extend_from_slice(b"]a");
    }
    p.push(b'.');
    assert!(run(&p).is_ok());
    // MARK/TUPLE nesting.
    let mut p = vec![b'('; 150_000];
    p.push(b')');
    p.extend(std::iter::repeat_n(b't', 150_000));
    p.push(b'.');
    let e = run(&p).unwrap_err().to_string();
    assert!(e.contains("nested more than"), "{e}");
}

#[test]
fn dropping_a_chain_built_through_the_memo_does_not_overflow() {
    // Lists linked through the memo: head = []; for i: b = []; memo[i] = b; head.append(b);
    // head = memo[i]. Each APPEND sees an empty list, so the depth check cannot see the
    // chain; dropping it must still not recurse.
    let n: u32 = 150_000;
    let mut p = vec![b']', b'r'];
    p.extend_from_slice(&0u32.to_le_bytes());
    for i in 1..=n {
        p.push(b']');
        p.push(b'r');
        p.extend_from_slice(&i.to_le_bytes());
        p.push(b'a');
        p.push(b'0');
        p.push(b'j');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'0');
    p.push(b'j');
    p.extend_from_slice(&0u32.to_le_bytes());
    p.push(b'.');
    // Run on a small stack so a recursive drop would certainly overflow.
    let ok = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let v = run(&p).unwrap();
            assert_eq!(v.kind(), "list");
            drop(v);
            true
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(ok);
}
