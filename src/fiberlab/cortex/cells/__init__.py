"""The cells of the pattern language: one module each, ``<Name>Cell(<Name>Config)``.

| token | cell | module |
|---|---|---|
| Ag | AGaLiTe | agalite.py |
| X, X^ | Transformer-XL | xl.py |
| M, M^ | mLSTM | mlstm.py |
| S, S^ | sLSTM | slstm.py |
| A | Axon (streaming diagonal RTU) | axon.py |
| L | LSTM | lstm.py |
| C | causal depthwise conv | conv.py |
"""
from fiberlab.cortex.cells.agalite import AGaLiTeCell, AGaLiTeConfig
from fiberlab.cortex.cells.axon import AxonCell, AxonConfig, AxonLayer
from fiberlab.cortex.cells.conv import CausalConvCell, CausalConvConfig
from fiberlab.cortex.cells.lstm import LSTMCell, LSTMConfig
from fiberlab.cortex.cells.mlstm import MLSTMCell, MLSTMConfig
from fiberlab.cortex.cells.slstm import SLSTMCell, SLSTMConfig
from fiberlab.cortex.cells.xl import XLCell, XLConfig

__all__ = [
    "AGaLiTeCell", "AGaLiTeConfig", "AxonCell", "AxonConfig", "AxonLayer", "CausalConvCell", "CausalConvConfig",
    "LSTMCell", "LSTMConfig", "MLSTMCell", "MLSTMConfig", "SLSTMCell", "SLSTMConfig", "XLCell", "XLConfig",
]
