//! The multicast passes on a real socket (loopback unicast): a receiver that loses a
//! large share of packets converges through repair rounds to the exact message bytes,
//! requests for blocks outside the plan notwithstanding.

use std::{collections::BTreeMap, net::UdpSocket, time::Duration};

use light::{
    coding::{CacheBudget, PlanInput, SchemeChoice, plan},
    fec::{Assembler, Event, FecParams},
    transport::{
        mac::PacketKey,
        tx::{TxConfig, multicast::Multicaster},
    },
};

#[test]
fn repair_rounds_converge_under_heavy_loss() {
    let files: Vec<Vec<u8>> = (0..2u8)
        .map(|f| {
            (0..3_000_000u32)
                .map(|i| (i as u8).wrapping_mul(31) ^ f)
                .collect()
        })
        .collect();
    let input = PlanInput {
        receivers: 2,
        file_lens: files.iter().map(|f| f.len() as u64).collect(),
        budget: CacheBudget::Fraction(0.5),
        scheme: SchemeChoice::Centralized,
        demands: vec![0, 1],
        seed: 1,
        min_subfile_bytes: 0,
        packet_bytes: 1408,
    };
    let plan = plan(&input).unwrap();
    // A small parity ceiling, so heavy loss exhausts it and sources get resent.
    let fec = FecParams::new(1408, 64, 2, 8).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket2::SockRef::from(&rx)
        .set_recv_buffer_size(64 << 20)
        .unwrap();
    let slices: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let mut tx = TxConfig::new(rx.local_addr().unwrap());
    tx.rate = Some(200_000_000);
    let key = PacketKey::random();
    let mut m = Multicaster::new(&plan, &slices, fec, 7, tx, Some(key.clone())).unwrap();
    let lens: Vec<(u32, u64)> = plan
        .messages()
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, s.len))
        .collect();
    let mut asm = Assembler::new(fec, 7, lens.iter().copied()).unwrap();
    let mut got = BTreeMap::new();
    let mut buf = vec![0u8; 2048];
    let mut rng = 12345u64;
    let progress = Default::default();
    m.first_pass(&progress).unwrap();
    for round in 0..40 {
        // Drain what arrived, dropping 30% of it.
        while let Ok(n) = rx.recv(&mut buf) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 10 < 3 {
                continue;
            }
            assert!(key.verify(&buf[..n]), "every packet is signed");
            if let Some(Event::MessageComplete { message, bytes }) = asm.on_packet(&buf[..n]) {
                got.insert(message, bytes);
            }
        }
        if asm.is_complete() {
            eprintln!("complete after {round} repair rounds");
            break;
        }
        let mut requests: BTreeMap<(u32, u32), u16> = asm
            .missing()
            .into_iter()
            .map(|x| ((x.message, x.block), x.needed))
            .collect();
        // A confused (or hostile) receiver's blocks outside the plan are ignored.
        requests.insert((0, 1_000_000), 3);
        requests.insert((u32::MAX, 0), 3);
        // Repair capped below the configured rate, as for an overrun receiver.
        m.repair(&requests, Some(200_000_000), &progress).unwrap();
    }
    assert!(asm.is_complete(), "still missing {:?}", asm.missing());
    for (i, spec) in plan.messages().iter().enumerate() {
        let mut want = vec![0u8; spec.len as usize];
        light::coding::encode_message(spec, &slices, &mut want).unwrap();
        assert_eq!(got[&(i as u32)], want, "message {i}");
    }
}
