#!/usr/bin/env python
"""Build the tiny random-weight chat model the real TAO server loads in the tests.

Runs at image-build time (scripts/build-real-server-image.sh) with the image's own
venv; nothing is downloaded.  The result is a HuggingFace folder that
``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline:

* a ``tokenizers`` WordLevel tokenizer over a few dozen words plus
  ``<unk> <s> </s> <pad>``, Whitespace pre-tokenizer and a chat template,
  wrapped in ``PreTrainedTokenizerFast``;
* a ``LlamaForCausalLM`` with random weights (hidden 64, 2 layers, 4 heads),
  seeded so that every build writes the same weights.

The output rows of the special tokens are zeroed, so greedy decoding always
picks a real word and a ``temperature: 0`` answer is never empty.  The script
checks that before it returns.

Usage: ``python make_tiny_model.py OUTPUT_DIR``
"""

import os
import sys

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
WORDS = (
    "system user assistant : . , ? ! a an the is are was of to and in on with for it this that "
    "what who where when why how image video robot cube red green blue stack pick place table "
    "camera scene left right up down hello world yes no one two three tao model answer question"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s> ' + message['role'] + ' : ' + message['content'] + ' </s> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s> assistant : ' }}{% endif %}"
)
SEED = 20240607
HIDDEN = 64
LAYERS = 2
HEADS = 4


def build_tokenizer():
    """A WordLevel tokenizer wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for token in SPECIAL_TOKENS + WORDS:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer):
    """A seeded random LlamaForCausalLM sized for the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 2,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for token in SPECIAL_TOKENS:
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)].zero_()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model


def self_check(folder):
    """Load the folder the way the server does and decode greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for prompt in ("hello", "What is in this image?", ""):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        if not answer.strip():
            raise SystemExit("make_tiny_model: greedy answer to %r is empty" % prompt)
    return answer


def main(argv):
    if len(argv) != 2:
        print("usage: make_tiny_model.py OUTPUT_DIR", file=sys.stderr)
        return 2
    folder = argv[1]
    os.makedirs(folder, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    answer = self_check(folder)
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    print("tiny model in %s: %d bytes, vocab %d, greedy sample %r" % (folder, size, len(tokenizer), answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
