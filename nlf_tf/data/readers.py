"""Registry of the dataset readers, by data spec name.

`READERS[name]` is a callable `iter_examples(root_dir, split='train', **options)` yielding
`Example` / `Skip` records (see `nlf_tf.data.example`). The reader modules are imported only when
a reader is first used, so listing the registry (e.g. for a CLI's --help) costs nothing and a
reader's optional dependencies are only needed when that reader runs.
"""

import collections.abc
import importlib


class LazyReader:
    """`iter_examples` of module `module`, with fixed keyword options, imported on first call."""

    def __init__(self, module, **fixed_options):
        self.module = module
        self.fixed_options = fixed_options

    def load(self):
        """The reader module's `iter_examples` function (imports the module)."""
        return importlib.import_module(self.module).iter_examples

    def __call__(self, root_dir, split='train', **options):
        clash = set(options) & set(self.fixed_options)
        if clash:
            raise ValueError(f'options {sorted(clash)} are fixed by this reader '
                             f'({self.module} with {self.fixed_options})')
        return self.load()(root_dir, split, **self.fixed_options, **options)

    def __repr__(self):
        extra = ''.join(f', {k}={v!r}' for k, v in self.fixed_options.items())
        return f'LazyReader({self.module!r}{extra})'


class _Registry(collections.abc.Mapping):
    def __init__(self, entries):
        self._entries = dict(entries)

    def __getitem__(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f'unknown dataset {name!r}; readers exist for: '
                           f'{", ".join(sorted(self._entries))}') from None

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


READERS = _Registry({
    'coco': LazyReader('nlf_tf.data.coco', variant='body'),
    'coco_wholebody': LazyReader('nlf_tf.data.coco', variant='wholebody'),
    'densepose_coco': LazyReader('nlf_tf.data.densepose_coco'),
    'mads': LazyReader('nlf_tf.data.mads'),
    'agora': LazyReader('nlf_tf.data.agora'),
    'behave': LazyReader('nlf_tf.data.behave'),
})


def get_reader(name):
    """READERS[name] with a clear error for unknown names."""
    return READERS[name]
