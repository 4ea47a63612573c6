//! The servers' codec: tonic's prost codec, except that a request whose
//! bytes are not a valid message (a truncated varint, a wrong wire type, a
//! length past the end) is answered INVALID_ARGUMENT, naming the decode
//! error. tonic-prost answers INTERNAL, which tells the caller the server
//! failed; here the caller sent bad bytes and retrying them cannot help.
//!
//! Only the generated servers use it (see `build.rs`): clients keep
//! tonic's codec, so a malformed *response* stays INTERNAL there. Framing
//! errors (a bad compression flag, a message over the size limit) are
//! tonic's, raised before the decoder runs, and keep their codes; statuses
//! a handler returns never pass through a decoder.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A [`Codec`] for the generated servers: encodes replies as
/// [`ProstCodec`] does, decodes requests with [`RequestDecoder`].
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes a request message as [`ProstDecoder`] does; a decode error is
/// INVALID_ARGUMENT ("malformed request: ..." and prost's words) instead
/// of INTERNAL.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // ProstDecoder fails only when prost cannot decode the bytes.
        self.0
            .decode(buf)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {}", e.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
