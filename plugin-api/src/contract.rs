//! Contracts as types: what a contract carries, how its values cross, and import calls.
//!
//! A contract is declared once with [`contract!`](macro@crate::contract), usually in a small crate
//! that the exporting plugin, the importing plugins and the host all depend on, so that using
//! it with the wrong types does not compile. Every declaration of it also travels in the plugin
//! (its [`Signature`]), so the host refuses at link time an import whose types differ from the
//! export's, even when the two plugins were built from different sources.
//!
//! The one `unsafe` operation of the plugin side is here: turning a bound import's
//! [`ErasedFn`] back into its typed function. It is sound because the host binds an import slot
//! only to an export whose signature (contract, wire, input and output types) equals the
//! import's, and the import's is `C`'s.

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use abi_stable::StableAbi;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::ffi::{Context, ErasedFn, ErrorKind, FfiError, JsonFn, Signature, TypeDesc, Wire};

/// A contract: its name (`name@N`) and the types of its input and output.
///
/// Implemented by [`contract!`](macro@crate::contract); not by hand.
pub trait Contract: 'static {
    /// The contract, `name@N`.
    const NAME: &'static str;
    /// What the caller passes.
    type In;
    /// What the callee returns.
    type Out;
    /// How the values cross: by value (StableAbi types) or as JSON (serde types).
    #[doc(hidden)]
    type Wire: WireOf<Self::In, Self::Out>;
}

/// The signature a contract declares, as it crosses to the host.
pub const fn signature<C: Contract>() -> Signature {
    Signature {
        contract: RStr::from_str(C::NAME),
        wire: <C::Wire as WireOf<C::In, C::Out>>::WIRE,
        input: <C::Wire as WireOf<C::In, C::Out>>::INPUT,
        output: <C::Wire as WireOf<C::In, C::Out>>::OUTPUT,
    }
}

/// Values cross by value: `#[repr(C)]` types deriving `StableAbi` (integers, `RString`,
/// `RVec`, `ROption`, structs of those), with no encoding and no allocation of their own.
#[derive(Debug, Clone, Copy)]
pub struct ByValue;

/// Values cross as JSON: any serde types, encoded by the caller and decoded by the callee.
#[derive(Debug, Clone, Copy)]
pub struct Json;

/// Values cross as JSON to an `async` export, whose call returns a future the host polls.
#[derive(Debug, Clone, Copy)]
pub struct AsyncJson;

/// How a wire describes an `I -> O` contract. Implemented by [`ByValue`], [`Json`] and
/// [`AsyncJson`] only.
#[doc(hidden)]
pub trait WireOf<I, O> {
    /// The wire's code.
    const WIRE: Wire;
    /// The input type, described for the host.
    const INPUT: TypeDesc;
    /// The output type, described for the host.
    const OUTPUT: TypeDesc;
}

/// How a synchronous wire carries an import call: [`ByValue`] and [`Json`].
#[doc(hidden)]
pub trait CallWire<I, O>: WireOf<I, O> {
    /// Calls `func` with `input`.
    ///
    /// # Safety
    ///
    /// `func` must be an export of this wire for exactly `I -> O` (see [`ErasedFn`]).
    unsafe fn call(func: ErasedFn, ctx: &Context<'_>, input: I) -> Result<O, FfiError>;
}

/// The typed function behind a [`ByValue`] export.
pub type ValueFn<I, O> = extern "C" fn(&Context<'_>, I) -> RResult<O, FfiError>;

impl<I: StableAbi, O: StableAbi> WireOf<I, O> for ByValue {
    const WIRE: Wire = Wire::BY_VALUE;
    const INPUT: TypeDesc = TypeDesc {
        layout: Some(I::LAYOUT),
        describe: None,
    };
    const OUTPUT: TypeDesc = TypeDesc {
        layout: Some(O::LAYOUT),
        describe: None,
    };
}

impl<I: StableAbi, O: StableAbi> CallWire<I, O> for ByValue {
    #[inline]
    unsafe fn call(func: ErasedFn, ctx: &Context<'_>, input: I) -> Result<O, FfiError> {
        // SAFETY: the caller guarantees `func` is a `ValueFn<I, O>` (see `ErasedFn`); function
        // pointers of every type have the same size and representation.
        let func = unsafe { std::mem::transmute::<ErasedFn, ValueFn<I, O>>(func) };
        func(ctx, input).into_result()
    }
}

impl<I, O> WireOf<I, O> for Json
where
    I: Serialize + DeserializeOwned,
    O: Serialize + DeserializeOwned,
{
    const WIRE: Wire = Wire::JSON;
    const INPUT: TypeDesc = json_desc::<I>();
    const OUTPUT: TypeDesc = json_desc::<O>();
}

impl<I, O> WireOf<I, O> for AsyncJson
where
    I: Serialize + DeserializeOwned,
    O: Serialize + DeserializeOwned,
{
    const WIRE: Wire = Wire::ASYNC_JSON;
    const INPUT: TypeDesc = json_desc::<I>();
    const OUTPUT: TypeDesc = json_desc::<O>();
}

const fn json_desc<T: DeserializeOwned>() -> TypeDesc {
    TypeDesc {
        layout: None,
        describe: Some(crate::runtime::describe::<T>),
    }
}

impl<I, O> CallWire<I, O> for Json
where
    I: Serialize + DeserializeOwned,
    O: Serialize + DeserializeOwned,
{
    unsafe fn call(func: ErasedFn, ctx: &Context<'_>, input: I) -> Result<O, FfiError> {
        let internal = |message: String| FfiError {
            kind: ErrorKind::INTERNAL,
            message: RString::from(message),
        };
        let bytes =
            serde_json::to_vec(&input).map_err(|e| internal(format!("encoding the input: {e}")))?;
        // SAFETY: the caller guarantees `func` is a `JsonFn` (see `ErasedFn`).
        let func = unsafe { std::mem::transmute::<ErasedFn, JsonFn>(func) };
        let output = func(ctx, RSlice::from_slice(&bytes))
            .into_result()
            .map_err(|e| match e.kind {
                // The callee refused what this plugin encoded: a bug between the two.
                ErrorKind::BAD_INPUT => {
                    internal(format!("the callee refused the input: {}", e.message))
                }
                _ => e,
            })?;
        serde_json::from_slice(&output).map_err(|e| internal(format!("decoding the output: {e}")))
    }
}

/// A typed handle on one of the plugin's imports: its contract and its slot.
///
/// Declared in the `imports` section of [`plugin!`](crate::plugin); the slot is the import's
/// position there, so a call indexes the link table and never looks a name up.
pub struct Import<C> {
    slot: u32,
    _contract: PhantomData<fn() -> C>,
}

impl<C: Contract> Import<C> {
    #[doc(hidden)]
    pub const fn __at(slot: u32) -> Self {
        Self {
            slot,
            _contract: PhantomData,
        }
    }

    /// The contract this import is bound to, `name@N`.
    pub const fn contract(&self) -> &'static str {
        C::NAME
    }

    pub(crate) const fn slot(&self) -> u32 {
        self.slot
    }
}

impl<C> Clone for Import<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Import<C> {}

impl<C: Contract> fmt::Debug for Import<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Import")
            .field("slot", &self.slot)
            .field("contract", &C::NAME)
            .finish()
    }
}

impl Context<'_> {
    /// Calls one of this plugin's imports, in the generation this call runs in.
    ///
    /// A by-value contract passes `input` as it is and returns the callee's value; a JSON
    /// contract encodes and decodes on the way.
    ///
    /// # Errors
    ///
    /// The callee's error, its kind kept and its message prefixed with the contract; an
    /// [`ErrorKind::INTERNAL`] error when JSON fails to encode or decode; an
    /// [`ErrorKind::UNBOUND_IMPORT`] error when the import is left open.
    #[inline]
    pub fn call<C: Contract>(&self, import: Import<C>, input: C::In) -> Result<C::Out, Error>
    where
        C::Wire: CallWire<C::In, C::Out>,
    {
        let (func, callee) = self.bound(import)?;
        // SAFETY: the host binds an import slot only to an export whose signature equals the
        // import's; this plugin declared slot `import.slot` with `signature::<C>()`.
        unsafe { <C::Wire as CallWire<C::In, C::Out>>::call(func, &callee, input) }.map_err(|e| {
            let mut err = Error::from_ffi(e);
            err.prefix(C::NAME);
            err
        })
    }
}

impl<'a> Context<'a> {
    /// The function an import slot is bound to, and the context to call it with.
    pub(crate) fn bound<C: Contract>(
        &self,
        import: Import<C>,
    ) -> Result<(ErasedFn, Context<'a>), Error> {
        let binding = self
            .table
            .plugins
            .get(self.plugin as usize)
            .and_then(|links| links.imports.get(import.slot() as usize))
            .ok_or_else(unbound::<C>)?;
        let func = binding.func.ok_or_else(unbound::<C>)?;
        let callee = Context {
            table: self.table,
            plugin: binding.plugin,
        };
        Ok((func, callee))
    }
}

#[cold]
fn unbound<C: Contract>() -> Error {
    Error::with_kind(
        ErrorKind::UNBOUND_IMPORT,
        format!("{}: no plugin of this generation exports it", C::NAME),
    )
}

/// Declares contracts: for each, a unit type implementing [`Contract`].
///
/// `fn(In) -> Out` declares a by-value contract (both types `#[repr(C)]` and deriving
/// `StableAbi`); `json fn(In) -> Out` one whose values cross as JSON (any serde types);
/// `json async fn(In) -> Out` a JSON one exported by an `async fn` (see
/// [`asynchronous`](crate::asynchronous)).
///
/// ```
/// use abi_stable::{std_types::RString, StableAbi};
///
/// #[repr(C)]
/// #[derive(StableAbi, serde::Serialize, serde::Deserialize)]
/// pub struct Quote {
///     pub cents: u64,
///     pub currency: RString,
/// }
///
/// graft_api::contract! {
///     /// The price of an item, by its number.
///     pub struct PriceV1 = "price@1": fn(u64) -> Quote;
///     /// A greeting; serde types, so it crosses as JSON.
///     pub struct GreetV1 = "greet@1": json fn(String) -> String;
/// }
///
/// use graft_api::Contract;
/// assert_eq!(PriceV1::NAME, "price@1");
/// ```
#[macro_export]
macro_rules! contract {
    () => {};
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident = $contract:literal :
            fn($in:ty) -> $out:ty; $($rest:tt)*
    ) => {
        $crate::__contract_type!([$(#[$meta])*] $vis $name $contract $in, $out, ByValue);
        $crate::contract!($($rest)*);
    };
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident = $contract:literal :
            json fn($in:ty) -> $out:ty; $($rest:tt)*
    ) => {
        $crate::__contract_type!([$(#[$meta])*] $vis $name $contract $in, $out, Json);
        $crate::contract!($($rest)*);
    };
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident = $contract:literal :
            json async fn($in:ty) -> $out:ty; $($rest:tt)*
    ) => {
        $crate::__contract_type!([$(#[$meta])*] $vis $name $contract $in, $out, AsyncJson);
        $crate::contract!($($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_type {
    ([$($meta:tt)*] $vis:vis $name:ident $contract:literal $in:ty, $out:ty, $wire:ident) => {
        $($meta)*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;

        impl $crate::Contract for $name {
            const NAME: &'static str = $contract;
            type In = $in;
            type Out = $out;
            type Wire = $crate::contract::$wire;
        }
    };
}
