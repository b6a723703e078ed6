"""JEAN (joint expression and audio-guided NeRF): a talking head whose lips follow one source's audio and whose
expression follows another's. Built in parts (issue 38); so far the expression transformer
(:mod:`nerf.jean.expression`) and its training (:mod:`nerf.jean.expression_train`). Not yet a registered method."""
