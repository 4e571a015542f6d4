//! `#[human_feedback(..)]` on a step: its options, parsed and checked with the shared rules
//! (`crewflow_rules::check_feedback`), and the `HumanFeedback` they build.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, LitStr, Token};

use crate::flow::string_list;

/// `#[human_feedback(message = "..", emit = [..], default_outcome = "..", llm = expr, provider = expr,
/// metadata = expr, learn = expr, learn_source = "..", learn_strict = bool)]`.
pub(crate) struct FeedbackAttr {
    message: LitStr,
    /// The outcomes (`emit`): labels the flow's checks and typed inputs read.
    pub(crate) emit: Vec<LitStr>,
    default: Option<LitStr>,
    llm: Option<Expr>,
    provider: Option<Expr>,
    metadata: Option<Expr>,
    learn: Option<Expr>,
    learn_source: Option<LitStr>,
    learn_strict: Option<syn::LitBool>,
    span: Span,
}

impl FeedbackAttr {
    pub(crate) fn parse(attr: &Attribute) -> syn::Result<Self> {
        let mut message = None;
        let (mut emit, mut default, mut llm, mut provider, mut metadata) = (Vec::new(), None, None, None, None);
        let (mut learn, mut learn_source, mut learn_strict) = (None, None, None);
        let args = attr.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated)?;
        for arg in args {
            let Expr::Assign(a) = &arg else {
                return Err(syn::Error::new(arg.span(), "expected `key = value`, e.g. message = \"Approve?\""));
            };
            let key = match &*a.left {
                Expr::Path(p) => p.path.get_ident().map(Ident::to_string),
                _ => None,
            };
            let lit = |e: &Expr| match e {
                Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Ok(s.clone()),
                other => Err(syn::Error::new(other.span(), "expected a string literal")),
            };
            match key.as_deref() {
                Some("message") => message = Some(lit(&a.right)?),
                Some("emit") => emit = string_list(&a.right)?,
                Some("default_outcome") => default = Some(lit(&a.right)?),
                Some("default") => {
                    return Err(syn::Error::new(
                        a.left.span(),
                        "the option is `default_outcome` (as in CrewAI, YAML flows and FeedbackRequest::default_outcome): default_outcome = \"...\"",
                    ));
                }
                Some("llm") => llm = Some((*a.right).clone()),
                Some("provider") => provider = Some((*a.right).clone()),
                Some("metadata") => metadata = Some((*a.right).clone()),
                Some("learn") => learn = Some((*a.right).clone()),
                Some("learn_source") => learn_source = Some(lit(&a.right)?),
                Some("learn_strict") => match &*a.right {
                    Expr::Lit(syn::ExprLit { lit: syn::Lit::Bool(b), .. }) => learn_strict = Some(b.clone()),
                    other => return Err(syn::Error::new(other.span(), "expected `true` or `false`")),
                },
                _ => {
                    return Err(syn::Error::new(
                        a.left.span(),
                        "unknown #[human_feedback] option; expected message, emit, default_outcome, llm, provider, metadata, learn, learn_source or learn_strict",
                    ));
                }
            }
        }
        let message = message.ok_or_else(|| {
            syn::Error::new(attr.span(), "#[human_feedback] needs a message: #[human_feedback(message = \"Approve?\")]")
        })?;
        Ok(FeedbackAttr {
            message,
            emit,
            default,
            llm,
            provider,
            metadata,
            learn,
            learn_source,
            learn_strict,
            span: attr.span(),
        })
    }

    /// The shared rules (`crewflow_rules::check_feedback`), the error at the option it names.
    pub(crate) fn check(&self, is_router: bool) -> syn::Result<()> {
        use crewflow_rules::FeedbackRule;
        let emit: Vec<String> = self.emit.iter().map(LitStr::value).collect();
        let default = self.default.as_ref().map(LitStr::value);
        let options = crewflow_rules::FeedbackOptions {
            is_router,
            emit: emit.iter().map(String::as_str).collect(),
            default_outcome: default.as_deref(),
            classifier: self.llm.is_some(),
            learner: self.learn.is_some(),
            learn_strict: self.learn_strict.as_ref().is_some_and(|b| b.value),
            learn_source: self.learn_source.is_some(),
        };
        let Err(rule) = crewflow_rules::check_feedback(&options) else { return Ok(()) };
        let span = match &rule {
            FeedbackRule::DefaultWithoutOutcomes(_) | FeedbackRule::DefaultNotAnOutcome { .. } => {
                self.default.as_ref().map(LitStr::span)
            }
            FeedbackRule::ClassifierWithoutOutcomes => self.llm.as_ref().map(Spanned::span),
            FeedbackRule::LearnStrictWithoutLearner => self.learn_strict.as_ref().map(Spanned::span),
            FeedbackRule::LearnSourceWithoutLearner => self.learn_source.as_ref().map(LitStr::span),
            FeedbackRule::EmptyOutcome | FeedbackRule::RepeatedOutcome(_) => self.emit.first().map(LitStr::span),
            _ => None,
        };
        Err(syn::Error::new(span.unwrap_or(self.span), rule))
    }

    pub(crate) fn var(step: &Ident) -> Ident {
        quote::format_ident!("__crewflow_feedback_{}", step)
    }

    /// The `HumanFeedback` value, built before `self` moves into the flow (so options may
    /// read `self`'s fields).
    pub(crate) fn build(&self, step: &Ident, krate: &TokenStream) -> TokenStream {
        let var = Self::var(step);
        let message = &self.message;
        let emit = (!self.emit.is_empty()).then(|| {
            let l = &self.emit;
            quote!(.emit([#(#l),*]))
        });
        let default = self.default.as_ref().map(|d| quote!(.default_outcome(#d)));
        let llm = self.llm.as_ref().map(|e| quote!(.classifier(#e)));
        let provider = self.provider.as_ref().map(|e| quote!(.provider(#e)));
        let metadata = self.metadata.as_ref().map(|e| quote!(.metadata(#e)));
        let learn = self.learn.as_ref().map(|e| quote!(.learn(#e)));
        let learn_source = self.learn_source.as_ref().map(|s| quote!(.learn_source(#s)));
        let learn_strict = self.learn_strict.as_ref().map(|b| quote!(.learn_strict(#b)));
        quote!(let #var = #krate::HumanFeedback::new(#message) #emit #default #llm #provider #metadata #learn #learn_source #learn_strict;)
    }
}
